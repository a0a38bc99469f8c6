//! Weight formats, their packing, quantization and dequantization.
//!
//! This module is the one definition of how weights are laid out; the WGSL in
//! `shaders/qweight.wgsl` mirrors it, and the round-trip tests pin both.
//!
//! Every weight is viewed as a matrix of `rows × cols`, where `cols` is the last
//! dimension (the reduction dimension of a matmul, the hidden size of an
//! embedding table) and `rows` the product of the others. Each row is packed
//! into `words_per_row` little-endian `u32` words, padded with zero values, so a
//! row starts on a word boundary whatever `cols` is:
//!
//! | format | values per word | value bits | scales (`scales` words) | value |
//! |---|---|---|---|---|
//! | `f32` | 1 | f32 bits | none | `w` |
//! | `f16` | 2 | IEEE half, low half first | none | `w` |
//! | `q8` | 4 | i8, byte `j` holds column `4i+j` | one f32 per row | `q · s` |
//! | `q8a8` | 4 | as `q8` | as `q8` | as `q8` |
//! | `q4` | 8 | u4 nibble `j` (bits `4j..4j+4`) holds `q + 8` | one f16 per group, two per word, low half first, groups numbered row-major | `(u − 8) · s` |
//! | `q4_1` | 8 | u4 as `q4` | one word per group: `pack2x16float(s, m)` | `u · s + m` |
//! | `q8_0` | 4 | i8 as `q8` | one f16 per group, as `q4` | `q · s` |
//! | `q6_k` | 8 | u4: the low four bits of `u`, as `q4` | 21 words per super-block of 256 values (GGUF `Q6_K`): `d` (f16, low half), 16 i8 group scales `sc_j`, then the high two bits of each `u` (bits `2i..2i+2` of word `i / 16` hold value `i`'s) | `(u − 32) · (d · sc_j)`, groups of 16 |
//! | `q4_k` | 8 | u4 as `q4` | four words per super-block of 256 values (GGUF `Q4_K`): `pack2x16float(d, dmin)`, then the 12 bytes of 6-bit sub-block scales and minimums, as GGUF packs them | `u · (d · sc_j) − dmin · m_j` |
//! | `bf16` | 2 | bfloat16, low half first | none | `w` |
//! | `q5_0` | 8 | u5: the low four bits as `q4` | three words per pair of groups of 32: the two f16 scales as `q4`'s, then each group's 32 fifth bits (bit `c` for the group's value `c`) | `(u − 16) · s` |
//! | `q5_1` | 8 | u5 as `q5_0` | two words per group of 32: `pack2x16float(s, m)`, then its fifth bits | `u · s + m` |
//! | `q5_k` | 8 | u5 as `q5_0` | twelve words per super-block of 256 values (GGUF `Q5_K`): the four of `q4_k`, then the 256 fifth bits (bit `c % 32` of word `c / 32`) | as `q4_k` |
//!
//! Groups run along `cols`: group `g` of a row covers columns `g·G .. (g+1)·G`,
//! and a row has `ceil(cols / G)` groups. `G` is 32, 64 or 128.
//!
//! `q4_k` is GGUF's `Q4_K` with its values in wedge's nibble order: rows of whole super-blocks
//! of 256 values, each of eight groups of 32 (`j`) whose scale `d · sc_j` and minimum
//! `dmin · m_j` come from 6-bit integers `sc_j`, `m_j` and the super-block's f16 `d` and `dmin`.
//! Every product there is exact in f32, so a value is one rounding of `u · s + m` with the
//! group's `(s, m) = (d · sc_j, −dmin · m_j)`, as in llama.cpp.
//!
//! `q8a8` stores exactly what `q8` stores; it differs in how a matmul uses it (w8a8): each
//! row of activations is rounded in blocks of [`A8_BLOCK`] values along the reduction, every
//! block to integers in `[-127, 127]` with its own scale `max|x| / 127`, and each block's
//! products are summed exactly in integers (on GPUs, four at a time with `dot4I8Packed`):
//!
//! `y[c] = s_w[c] · Σ_b s_x[b] · Σ_{k ∈ b} q_x[k] · q_w[c, k]`, blocks summed in order.
//!
//! A block whose maximum is not finite (a NaN or an infinity in it) makes the row's outputs
//! NaN. Both backends compute exactly this; only the order of the float sum over blocks and
//! fused multiply-adds can differ. An embedding table in `q8a8` gathers as `q8`.
//!
//! Rounding is round-half-to-even after a true division `w / s`, as
//! `torch.round(w / s)` does, so packed values match PyTorch fake quantization.

use half::f16;
#[cfg(target_endian = "little")]
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use crate::error::{Result, weight_err};

/// How a weight's values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Format {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// Symmetric INT8 per row (output channel), f32 scale `max|w| / 127`.
    Q8,
    /// `q8` weights whose matmuls round the activations to 8 bits in blocks (w8a8).
    #[serde(rename = "q8a8")]
    Q8A8,
    /// Symmetric INT4 in groups along the row, f16 scale `max|w| / 7`, values in `[-8, 7]`.
    Q4 {
        /// Group size along the reduction dimension: 32, 64 or 128.
        group: u32,
    },
    /// Asymmetric INT4 in groups (scale and minimum, as GGUF `Q4_1`), values in `[0, 15]`.
    Q4_1 {
        /// Group size along the reduction dimension: 32, 64 or 128.
        group: u32,
    },
    /// Symmetric INT8 in groups along the row, f16 scale `max|w| / 127` (GGUF `Q8_0` at 32).
    #[serde(rename = "q8_0")]
    Q8_0 {
        /// Group size along the reduction dimension: 32, 64 or 128.
        group: u32,
    },
    /// Asymmetric INT4 in super-blocks of 256 values with 6-bit group scales and minimums
    /// (GGUF `Q4_K`; groups of 32).
    #[serde(rename = "q4_k")]
    Q4K,
    /// Symmetric 6-bit in super-blocks of 256 values with i8 scales per group of 16 and an f16
    /// scale per super-block (GGUF `Q6_K`).
    #[serde(rename = "q6_k")]
    Q6K,
    /// bfloat16 (GGUF `BF16`): the high half of an f32.
    #[serde(rename = "bf16")]
    Bf16,
    /// Symmetric 5-bit in groups of 32 with an f16 scale, values in `[-16, 15]` (GGUF `Q5_0`).
    #[serde(rename = "q5_0")]
    Q5_0,
    /// Asymmetric 5-bit in groups of 32 (scale and minimum, GGUF `Q5_1`), values in `[0, 31]`.
    #[serde(rename = "q5_1")]
    Q5_1,
    /// Asymmetric 5-bit in super-blocks of 256 values with `q4_k`'s scales (GGUF `Q5_K`).
    #[serde(rename = "q5_k")]
    Q5K,
}

/// Values per super-block of the k-quant formats (`q4_k`, `q6_k`).
pub const SUPER_BLOCK: usize = 256;

/// Scale words per super-block of `q4_k`: `(d, dmin)` as two halves, then 12 bytes.
const Q4K_WORDS: usize = 4;

/// Scale words per super-block of `q6_k`: `d`, 16 i8 scales (4 words), 256 × 2 high bits (16).
pub const Q6K_WORDS: usize = 21;

/// Scale words per super-block of `q5_k`: those of `q4_k`, then 256 fifth bits (8).
pub const Q5K_WORDS: usize = 12;

/// Activations per block of a `q8a8` matmul (see the module docs).
pub const A8_BLOCK: usize = 32;

/// Group sizes accepted for the grouped formats.
pub const GROUP_SIZES: [u32; 3] = [32, 64, 128];

/// Numeric codes shared with WGSL (`WTYPE` override constant).
impl Format {
    /// The `WTYPE` code used by the kernels.
    pub fn code(self) -> u32 {
        match self {
            Format::F32 => 0,
            Format::F16 => 1,
            Format::Q8 => 2,
            Format::Q4 { .. } => 3,
            Format::Q4_1 { .. } => 4,
            Format::Q8A8 => 5,
            Format::Q8_0 { .. } => 6,
            Format::Q4K => 7,
            Format::Q6K => 8,
            Format::Bf16 => 9,
            Format::Q5_0 => 10,
            Format::Q5_1 => 11,
            Format::Q5K => 12,
        }
    }

    /// Short name, as used on the command line (`f32`, `f16`, `q8`, `q4`, `q4_1`).
    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::F16 => "f16",
            Format::Q8 => "q8",
            Format::Q4 { .. } => "q4",
            Format::Q4_1 { .. } => "q4_1",
            Format::Q8A8 => "q8a8",
            Format::Q8_0 { .. } => "q8_0",
            Format::Q4K => "q4_k",
            Format::Q6K => "q6_k",
            Format::Bf16 => "bf16",
            Format::Q5_0 => "q5_0",
            Format::Q5_1 => "q5_1",
            Format::Q5K => "q5_k",
        }
    }

    /// Parse `f32`, `f16`, `bf16`, `q8`, `q8a8`, `q8_0`, `q4`, `q4_1`, `q5_0`, `q5_1`, `q4_k`,
    /// `q5_k`, `q6_k`, with the group size used for
    /// the grouped ones that take one.
    pub fn parse(s: &str, group: u32) -> Option<Format> {
        Some(match s {
            "f32" => Format::F32,
            "f16" => Format::F16,
            "q8" => Format::Q8,
            "q8a8" => Format::Q8A8,
            "q4" => Format::Q4 { group },
            "q4_1" => Format::Q4_1 { group },
            "q8_0" => Format::Q8_0 { group },
            "q4_k" => Format::Q4K,
            "q6_k" => Format::Q6K,
            "bf16" => Format::Bf16,
            "q5_0" => Format::Q5_0,
            "q5_1" => Format::Q5_1,
            "q5_k" => Format::Q5K,
            _ => return None,
        })
    }

    /// Values packed into one `u32` word.
    pub fn values_per_word(self) -> usize {
        match self {
            Format::F32 => 1,
            Format::F16 | Format::Bf16 => 2,
            Format::Q8 | Format::Q8A8 | Format::Q8_0 { .. } => 4,
            Format::Q4 { .. }
            | Format::Q4_1 { .. }
            | Format::Q4K
            | Format::Q6K
            | Format::Q5_0
            | Format::Q5_1
            | Format::Q5K => 8,
        }
    }

    /// Whether rows are whole super-blocks of [`SUPER_BLOCK`] values (`q4_k`, `q5_k`, `q6_k`).
    pub fn super_blocks(self) -> bool {
        matches!(self, Format::Q4K | Format::Q5K | Format::Q6K)
    }

    /// Bits of each value kept in the scale words beside its low four (`q5_*`: 1, `q6_k`: 2).
    pub fn high_bits(self) -> u32 {
        match self {
            Format::Q5_0 | Format::Q5_1 | Format::Q5K => 1,
            Format::Q6K => 2,
            _ => 0,
        }
    }

    /// Group size for the grouped formats, 0 otherwise.
    pub fn group(self) -> u32 {
        match self {
            Format::Q4 { group } | Format::Q4_1 { group } | Format::Q8_0 { group } => group,
            Format::Q4K | Format::Q5K | Format::Q5_0 | Format::Q5_1 => 32,
            Format::Q6K => 16,
            _ => 0,
        }
    }

    /// Packed words per row of `cols` values.
    pub fn words_per_row(self, cols: usize) -> usize {
        cols.div_ceil(self.values_per_word())
    }

    /// Groups per row (0 for ungrouped formats).
    pub fn groups_per_row(self, cols: usize) -> usize {
        match self.group() {
            0 => 0,
            g => cols.div_ceil(g as usize),
        }
    }

    /// Number of value words and scale words for a `rows × cols` weight, or `None` on overflow.
    pub fn packed_words(self, rows: usize, cols: usize) -> Option<(usize, usize)> {
        let words = rows.checked_mul(self.words_per_row(cols))?;
        let scales = match self {
            Format::F32 | Format::F16 | Format::Bf16 => 0,
            Format::Q8 | Format::Q8A8 => rows,
            Format::Q5_0 => rows.checked_mul(self.groups_per_row(cols))?.div_ceil(2).checked_mul(3)?,
            Format::Q5_1 => rows.checked_mul(self.groups_per_row(cols))?.checked_mul(2)?,
            Format::Q5K => rows.checked_mul(cols.div_ceil(SUPER_BLOCK))?.checked_mul(Q5K_WORDS)?,
            Format::Q4 { .. } | Format::Q8_0 { .. } => rows.checked_mul(self.groups_per_row(cols))?.div_ceil(2),
            Format::Q4_1 { .. } => rows.checked_mul(self.groups_per_row(cols))?,
            Format::Q4K => rows.checked_mul(cols.div_ceil(SUPER_BLOCK))?.checked_mul(Q4K_WORDS)?,
            Format::Q6K => rows.checked_mul(cols.div_ceil(SUPER_BLOCK))?.checked_mul(Q6K_WORDS)?,
        };
        Some((words, scales))
    }

    /// Checks the format's own parameters.
    pub fn validate(self) -> std::result::Result<(), String> {
        match self {
            Format::Q4 { group } | Format::Q4_1 { group } | Format::Q8_0 { group } if !GROUP_SIZES.contains(&group) => {
                Err(format!("group size {group} is not supported (use one of {GROUP_SIZES:?})"))
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.group() {
            0 => f.write_str(self.name()),
            g => write!(f, "{}/g{g}", self.name()),
        }
    }
}

/// The 6-bit scale and minimum of group `j` (0..8) of a `q4_k` super-block from its 12 packed
/// bytes (three little-endian words), as GGUF packs them: groups 0-3 in the low six bits of
/// bytes `j` and `j + 4`, groups 4-7 in the nibbles of bytes `j + 4` with their top two bits
/// in the high bits of bytes `j - 4` and `j`.
#[inline]
pub fn q4k_scale_min(packed: &[u32], j: usize) -> (u8, u8) {
    let b = |i: usize| (packed[i / 4] >> (8 * (i % 4))) as u8;
    if j < 4 {
        (b(j) & 63, b(j + 4) & 63)
    } else {
        ((b(j + 4) & 0xf) | ((b(j - 4) >> 6) << 4), (b(j + 4) >> 4) | ((b(j) >> 6) << 4))
    }
}

/// Quantizes one super-block of 256 values to `q6_k` (plain round to nearest): each group of 16
/// gets the step `max|x| / 31`, rounded to an i8 multiple of the super-block's `d` (f16, the
/// largest step / 127), and each value the nearest of its group's levels `-32..=31`. Writes the
/// 21 scale words and 32 value words.
fn quantize_q6k_block(block: &[f32], scales: &mut [u32], words: &mut [u32]) {
    let step: Vec<f32> = block.chunks_exact(16).map(|g| g.iter().fold(0f32, |m, v| m.max(v.abs())) / 31.0).collect();
    let d = f16::from_f32(step.iter().fold(0f32, |m, v| m.max(*v)) / 127.0);
    let df = d.to_f32();
    scales[0] = u32::from(d.to_bits());
    for (j, st) in step.iter().enumerate() {
        let sc = if df > 0.0 { (st / df).round_ties_even().clamp(0.0, 127.0) as u8 } else { 0 };
        scales[1 + j / 4] |= u32::from(sc) << (8 * (j % 4));
        let s = df * f32::from(sc);
        for (i, v) in block[16 * j..16 * (j + 1)].iter().enumerate() {
            let q = if s > 0.0 { (v / s).round_ties_even().clamp(-32.0, 31.0) as i32 } else { 0 };
            let (u, c) = ((q + 32) as u32, 16 * j + i);
            words[c / 8] |= (u & 0xf) << (4 * (c % 8));
            scales[5 + c / 16] |= (u >> 4) << (2 * (c % 16));
        }
    }
}

/// Quantizes one super-block of 256 values to `q4_k`, or `q5_k` when `five` (plain round to
/// nearest): each group of 32 gets the range of its values and zero, `[min(0, lo), hi]`, split
/// in 15 (31) steps; the steps and the minimums are rounded to six bits against the
/// super-block's largest, `d` and `dmin` (f16), and each value to the nearest of its group's 16
/// (32) levels. Writes the four (twelve) scale words and 32 value words.
fn quantize_k_block(block: &[f32], five: bool, scales: &mut [u32], words: &mut [u32]) {
    let top = if five { 31.0 } else { 15.0 };
    let mut step = [0f32; 8];
    let mut low = [0f32; 8];
    for (j, g) in block.chunks_exact(32).enumerate() {
        let lo = g.iter().fold(0f32, |m, v| m.min(*v));
        let hi = g.iter().fold(lo, |m, v| m.max(*v));
        (step[j], low[j]) = ((hi - lo) / top, -lo);
    }
    let six = |v: f32, unit: f32| if unit > 0.0 { (v / unit).round_ties_even().clamp(0.0, 63.0) as u8 } else { 0 };
    let d = f16::from_f32(step.iter().fold(0f32, |m, v| m.max(*v)) / 63.0);
    let dmin = f16::from_f32(low.iter().fold(0f32, |m, v| m.max(*v)) / 63.0);
    let (sc, mn): ([u8; 8], [u8; 8]) = (step.map(|v| six(v, d.to_f32())), low.map(|v| six(v, dmin.to_f32())));
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] = sc[j];
            packed[j + 4] = mn[j];
        } else {
            packed[j + 4] = (sc[j] & 0xf) | ((mn[j] & 0xf) << 4);
            packed[j - 4] |= (sc[j] >> 4) << 6;
            packed[j] |= (mn[j] >> 4) << 6;
        }
    }
    scales[0] = u32::from(d.to_bits()) | (u32::from(dmin.to_bits()) << 16);
    for (w, b) in scales[1..4].iter_mut().zip(packed.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    for (j, g) in block.chunks_exact(32).enumerate() {
        let s = d.to_f32() * f32::from(sc[j]);
        let m = dmin.to_f32() * f32::from(mn[j]);
        for (i, v) in g.iter().enumerate() {
            let u = if s > 0.0 { ((v + m) / s).round_ties_even().clamp(0.0, top) as u32 } else { 0 };
            let c = 32 * j + i;
            words[c / 8] |= (u & 0xf) << (4 * (c % 8));
            if five {
                scales[4 + j] |= (u >> 4) << i;
            }
        }
    }
}

/// A named weight tensor in one of the [`Format`]s, packed as the module docs describe.
#[derive(Clone, PartialEq)]
pub struct Weight {
    /// Tensor name (as in the source checkpoint).
    pub name: String,
    /// Logical shape; the last dimension is `cols`.
    pub shape: Vec<usize>,
    /// Storage format.
    pub format: Format,
    /// Packed values, `rows × words_per_row` words.
    pub words: Vec<u32>,
    /// Packed scales (and minimums for `q4_1`).
    pub scales: Vec<u32>,
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weight")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .field("format", &self.format)
            .field("words", &self.words.len())
            .field("scales", &self.scales.len())
            .finish()
    }
}

/// `(rows, cols)` of a shape: cols is the last dimension, rows the product of the rest.
pub fn rows_cols(shape: &[usize]) -> Option<(usize, usize)> {
    let cols = *shape.last()?;
    let rows = shape[..shape.len() - 1].iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    Some((rows, cols))
}

fn round_div(w: f32, s: f32) -> f32 {
    (w / s).round_ties_even()
}

fn check_len(name: &str, shape: &[usize], n: usize) -> Result<(usize, usize)> {
    let (rows, cols) = rows_cols(shape).ok_or_else(|| weight_err(name, format!("bad shape {shape:?}")))?;
    if rows.checked_mul(cols) != Some(n) {
        return Err(weight_err(name, format!("shape {shape:?} does not hold {n} values")));
    }
    Ok((rows, cols))
}

impl Weight {
    /// Quantizes (or stores) f32 values of the given shape in `format`, with the plain
    /// round-to-nearest scales described in the module docs.
    pub fn quantize(name: &str, shape: &[usize], values: &[f32], format: Format) -> Result<Weight> {
        format.validate().map_err(|m| weight_err(name, m))?;
        let (rows, cols) = check_len(name, shape, values.len())?;
        if format.super_blocks() && !cols.is_multiple_of(SUPER_BLOCK) {
            return Err(weight_err(
                name,
                format!("{format} rows are whole super-blocks of {SUPER_BLOCK} values, not {cols}"),
            ));
        }
        let wpr = format.words_per_row(cols);
        let (nw, ns) = format.packed_words(rows, cols).ok_or_else(|| weight_err(name, "size overflows"))?;
        let mut words = vec![0u32; nw];
        let mut scales = vec![0u32; ns];
        let ng = format.groups_per_row(cols);
        let mut half_scales: Vec<f16> = Vec::new();
        if let Format::Q4 { .. } | Format::Q8_0 { .. } | Format::Q5_0 = format {
            half_scales = vec![f16::ZERO; rows * ng];
        }
        // q5_0 and q5_1: each group's fifth bits
        let mut fifth = vec![0u32; if format.high_bits() == 1 { rows * ng } else { 0 }];
        for r in 0..rows {
            let row = &values[r * cols..(r + 1) * cols];
            let out = &mut words[r * wpr..(r + 1) * wpr];
            match format {
                Format::F32 => {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o = v.to_bits();
                    }
                }
                Format::F16 => {
                    for (c, v) in row.iter().enumerate() {
                        let h = u32::from(f16::from_f32(*v).to_bits());
                        out[c / 2] |= h << (16 * (c % 2));
                    }
                }
                Format::Bf16 => {
                    for (c, v) in row.iter().enumerate() {
                        let h = u32::from(half::bf16::from_f32(*v).to_bits());
                        out[c / 2] |= h << (16 * (c % 2));
                    }
                }
                Format::Q8 | Format::Q8A8 => {
                    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let mut s = amax / 127.0;
                    if s == 0.0 {
                        s = 1.0;
                    }
                    scales[r] = s.to_bits();
                    for (c, v) in row.iter().enumerate() {
                        let q = round_div(*v, s).clamp(-127.0, 127.0) as i32;
                        out[c / 4] |= ((q as u32) & 0xff) << (8 * (c % 4));
                    }
                }
                Format::Q8_0 { group } => {
                    let g = group as usize;
                    for (gi, chunk) in row.chunks(g).enumerate() {
                        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let mut s = f16::from_f32(amax / 127.0);
                        if s.to_f32() == 0.0 {
                            s = f16::ONE;
                        }
                        half_scales[r * ng + gi] = s;
                        for (j, v) in chunk.iter().enumerate() {
                            let c = gi * g + j;
                            let q = round_div(*v, s.to_f32()).clamp(-127.0, 127.0) as i32;
                            out[c / 4] |= ((q as u32) & 0xff) << (8 * (c % 4));
                        }
                    }
                }
                Format::Q6K => {
                    let sbs = cols / SUPER_BLOCK;
                    for (sbi, block) in row.chunks_exact(SUPER_BLOCK).enumerate() {
                        let at = (r * sbs + sbi) * Q6K_WORDS;
                        quantize_q6k_block(block, &mut scales[at..at + Q6K_WORDS], &mut out[sbi * 32..(sbi + 1) * 32]);
                    }
                }
                Format::Q4K | Format::Q5K => {
                    let (sbs, five) = (cols / SUPER_BLOCK, format == Format::Q5K);
                    let n = if five { Q5K_WORDS } else { Q4K_WORDS };
                    for (sbi, block) in row.chunks_exact(SUPER_BLOCK).enumerate() {
                        let at = (r * sbs + sbi) * n;
                        quantize_k_block(block, five, &mut scales[at..at + n], &mut out[sbi * 32..(sbi + 1) * 32]);
                    }
                }
                Format::Q4 { .. } | Format::Q4_1 { .. } | Format::Q5_0 | Format::Q5_1 => {
                    let g = format.group() as usize;
                    // symmetric: levels -half..half-1, stored as q + half; else 0..2·half-1
                    let half = if format.high_bits() == 1 { 16.0 } else { 8.0 };
                    let symmetric = matches!(format, Format::Q4 { .. } | Format::Q5_0);
                    for gi in 0..ng {
                        let chunk = &row[gi * g..((gi + 1) * g).min(cols)];
                        let (s, m, lo, hi) = if symmetric {
                            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                            let mut s = f16::from_f32(amax / (half - 1.0));
                            if s.to_f32() == 0.0 {
                                s = f16::ONE;
                            }
                            half_scales[r * ng + gi] = s;
                            (s.to_f32(), 0.0, -half, half - 1.0)
                        } else {
                            let mn = chunk.iter().fold(f32::INFINITY, |m, v| m.min(*v));
                            let mx = chunk.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                            let m16 = f16::from_f32(mn);
                            let mut s16 = f16::from_f32((mx - m16.to_f32()) / (2.0 * half - 1.0));
                            if s16.to_f32() <= 0.0 || !s16.is_finite() {
                                s16 = f16::ONE;
                            }
                            let sm = u32::from(s16.to_bits()) | (u32::from(m16.to_bits()) << 16);
                            let at = if format == Format::Q5_1 { 2 * (r * ng + gi) } else { r * ng + gi };
                            scales[at] = sm;
                            (s16.to_f32(), m16.to_f32(), 0.0, 2.0 * half - 1.0)
                        };
                        for (j, v) in chunk.iter().enumerate() {
                            let c = gi * g + j;
                            let q = round_div(*v - m, s).clamp(lo, hi);
                            let u = if symmetric { q + half } else { q } as u32;
                            out[c / 8] |= (u & 0xf) << (4 * (c % 8));
                            if let Some(f) = fifth.get_mut(r * ng + gi) {
                                *f |= (u >> 4) << j;
                            }
                        }
                    }
                }
            }
        }
        match format {
            Format::Q4 { .. } | Format::Q8_0 { .. } => {
                for (i, s) in half_scales.iter().enumerate() {
                    scales[i / 2] |= u32::from(s.to_bits()) << (16 * (i % 2));
                }
            }
            Format::Q5_0 => {
                for (i, (s, f)) in half_scales.iter().zip(&fifth).enumerate() {
                    scales[(i / 2) * 3] |= u32::from(s.to_bits()) << (16 * (i % 2));
                    scales[(i / 2) * 3 + 1 + i % 2] = *f;
                }
            }
            Format::Q5_1 => {
                for (i, f) in fifth.iter().enumerate() {
                    scales[2 * i + 1] = *f;
                }
            }
            _ => {}
        }
        Ok(Weight { name: name.to_string(), shape: shape.to_vec(), format, words, scales })
    }

    /// An f32 weight that owns `values` as they are.
    pub fn from_f32(name: &str, shape: &[usize], values: &[f32]) -> Result<Weight> {
        Weight::quantize(name, shape, values, Format::F32)
    }

    /// A weight that holds little-endian F32, F16 or BF16 values (`data`, the values of
    /// `shape` in row-major order, as safetensors and GGUF store them) bit for bit: nothing is
    /// converted or rounded. A row of odd length in a half format ends in a zero half of its
    /// own word.
    pub fn from_le_bytes(name: &str, shape: &[usize], format: Format, data: &[u8]) -> Result<Weight> {
        let size = match format {
            Format::F32 => 4,
            Format::F16 | Format::Bf16 => 2,
            other => return Err(weight_err(name, format!("{other} is not a float format"))),
        };
        let (rows, cols) = check_len(name, shape, data.len() / size)?;
        if !data.len().is_multiple_of(size) {
            return Err(weight_err(name, format!("{} bytes are not whole {format} values", data.len())));
        }
        let word = |b: &[u8]| {
            let byte = |i: usize| u32::from(b.get(i).copied().unwrap_or(0));
            byte(0) | byte(1) << 8 | byte(2) << 16 | byte(3) << 24
        };
        let words = if size == 4 || cols == 0 {
            data.chunks_exact(4).map(word).collect()
        } else {
            let mut words = Vec::with_capacity(rows * format.words_per_row(cols));
            for row in data.chunks_exact(2 * cols) {
                words.extend(row.chunks(4).map(word));
            }
            words
        };
        Weight::from_packed(name, shape, format, words, Vec::new())
    }

    /// Builds a weight from already packed words, checking every length against the shape.
    pub fn from_packed(
        name: &str,
        shape: &[usize],
        format: Format,
        words: Vec<u32>,
        scales: Vec<u32>,
    ) -> Result<Weight> {
        let w = Weight { name: name.to_string(), shape: shape.to_vec(), format, words, scales };
        w.validate()?;
        Ok(w)
    }

    /// Checks that the packed data has exactly the size the format and shape call for.
    pub fn validate(&self) -> Result<()> {
        self.format.validate().map_err(|m| weight_err(&self.name, m))?;
        let (rows, cols) =
            rows_cols(&self.shape).ok_or_else(|| weight_err(&self.name, format!("bad shape {:?}", self.shape)))?;
        if self.format.super_blocks() && !cols.is_multiple_of(SUPER_BLOCK) {
            return Err(weight_err(
                &self.name,
                format!("{} rows are whole super-blocks of {SUPER_BLOCK} values, not {cols}", self.format),
            ));
        }
        let (nw, ns) = self.format.packed_words(rows, cols).ok_or_else(|| weight_err(&self.name, "size overflows"))?;
        if self.words.len() != nw || self.scales.len() != ns {
            return Err(weight_err(
                &self.name,
                format!(
                    "{} {:?} needs {nw} value words and {ns} scale words, found {} and {}",
                    self.format,
                    self.shape,
                    self.words.len(),
                    self.scales.len()
                ),
            ));
        }
        Ok(())
    }

    /// `(rows, cols)` of this weight.
    pub fn rows_cols(&self) -> (usize, usize) {
        rows_cols(&self.shape).unwrap_or((0, 0))
    }

    /// Number of logical values.
    pub fn numel(&self) -> usize {
        let (r, c) = self.rows_cols();
        r * c
    }

    /// Bytes of packed storage (values and scales).
    pub fn packed_bytes(&self) -> usize {
        4 * (self.words.len() + self.scales.len())
    }

    /// The affine `(scale, offset)` that applies to the values of packed word `word` of `row`.
    #[inline]
    pub fn word_affine(&self, row: usize, word: usize) -> (f32, f32) {
        let cols = self.shape.last().copied().unwrap_or(0);
        match self.format {
            Format::F32 | Format::F16 | Format::Bf16 => (1.0, 0.0),
            Format::Q8 | Format::Q8A8 => (f32::from_bits(self.scales[row]), 0.0),
            Format::Q4 { .. }
            | Format::Q4_1 { .. }
            | Format::Q8_0 { .. }
            | Format::Q4K
            | Format::Q6K
            | Format::Q5_0
            | Format::Q5_1
            | Format::Q5K => self.group_affine(
                row * self.format.groups_per_row(cols)
                    + word * self.format.values_per_word() / self.format.group() as usize,
            ),
        }
    }

    /// The affine `(scale, offset)` of group `g` (counted over the whole tensor, row-major) of a
    /// `q4`, `q4_1` or `q8_0` weight: a value is `raw · scale + offset`. `(1, 0)` for other formats.
    #[inline]
    pub fn group_affine(&self, g: usize) -> (f32, f32) {
        match self.format {
            Format::Q8_0 { .. } => (f16::from_bits((self.scales[g / 2] >> (16 * (g % 2))) as u16).to_f32(), 0.0),
            Format::Q4 { .. } => {
                let s = f16::from_bits((self.scales[g / 2] >> (16 * (g % 2))) as u16).to_f32();
                (s, -8.0 * s)
            }
            Format::Q4_1 { .. } => {
                let sm = self.scales[g];
                (f16::from_bits(sm as u16).to_f32(), f16::from_bits((sm >> 16) as u16).to_f32())
            }
            Format::Q6K => {
                let sb = &self.scales[(g / 16) * Q6K_WORDS..(g / 16 + 1) * Q6K_WORDS];
                let sc = (sb[1 + (g % 16) / 4] >> (8 * (g % 4))) as u8 as i8;
                (f16::from_bits(sb[0] as u16).to_f32() * f32::from(sc), 0.0)
            }
            Format::Q5_0 => {
                let s = f16::from_bits((self.scales[(g / 2) * 3] >> (16 * (g % 2))) as u16).to_f32();
                (s, -16.0 * s)
            }
            Format::Q5_1 => {
                let sm = self.scales[2 * g];
                (f16::from_bits(sm as u16).to_f32(), f16::from_bits((sm >> 16) as u16).to_f32())
            }
            Format::Q4K | Format::Q5K => {
                let n = if self.format == Format::Q5K { Q5K_WORDS } else { Q4K_WORDS };
                let sb = &self.scales[(g / 8) * n..(g / 8) * n + Q4K_WORDS];
                let (sc, m) = q4k_scale_min(&sb[1..], g % 8);
                let (d, dmin) = (f16::from_bits(sb[0] as u16).to_f32(), f16::from_bits((sb[0] >> 16) as u16).to_f32());
                (d * f32::from(sc), -(dmin * f32::from(m)))
            }
            _ => (1.0, 0.0),
        }
    }

    /// The bits above the low four of the eight values of value word `wi` of row `row`, kept
    /// in the scale words ([`Format::high_bits`] each, value `j`'s at bit `j · high_bits`); 0 for
    /// formats without them.
    #[inline]
    pub fn high_bits(&self, row: usize, wi: usize) -> u32 {
        let cols = self.shape.last().copied().unwrap_or(0);
        let at = row * self.format.words_per_row(cols) + wi;
        // (q5_0 and q5_1: four value words per group of 32)
        let g = row * self.format.groups_per_row(cols) + wi / 4;
        let (word, byte) = match self.format {
            Format::Q6K => {
                let (sb, within) = (at / 32, at % 32);
                return (self.scales[sb * Q6K_WORDS + 5 + within / 2] >> (16 * (within % 2))) & 0xffff;
            }
            Format::Q5_0 => (self.scales[(g / 2) * 3 + 1 + g % 2], wi % 4),
            Format::Q5_1 => (self.scales[2 * g + 1], wi % 4),
            Format::Q5K => (self.scales[(at / 32) * Q5K_WORDS + 4 + (at % 32) / 4], at % 4),
            _ => return 0,
        };
        (word >> (8 * byte)) & 0xff
    }

    /// Dequantizes row `row` into `out` (length `cols`).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let cols = out.len();
        let vpw = self.format.values_per_word();
        let wpr = self.format.words_per_row(cols);
        let words = &self.words[row * wpr..(row + 1) * wpr];
        match self.format {
            Format::F32 => out.iter_mut().zip(words).for_each(|(d, w)| *d = f32::from_bits(*w)),
            #[cfg(target_endian = "little")]
            Format::F16 => {
                // the low half of a word is the first value: on little-endian targets the row
                // is a plain run of halves, converted in bulk (F16C where the CPU has it)
                let halves: &[f16] = bytemuck::cast_slice(words);
                halves[..cols].convert_to_f32_slice(out);
            }
            #[cfg(not(target_endian = "little"))]
            Format::F16 => {
                for (pair, word) in out.chunks_mut(2).zip(words) {
                    for (j, d) in pair.iter_mut().enumerate() {
                        *d = f16::from_bits((word >> (16 * j)) as u16).to_f32();
                    }
                }
            }
            Format::Q8 | Format::Q8A8 | Format::Q8_0 { .. } => {
                // one scale per row (q8), or per group (q8_0)
                for (wi, (quad, word)) in out.chunks_mut(4).zip(words).enumerate() {
                    let (s, _) = self.word_affine(row, wi);
                    for (j, d) in quad.iter_mut().enumerate() {
                        *d = f32::from((word >> (8 * j)) as u8 as i8) * s;
                    }
                }
            }
            Format::Bf16 => {
                for (pair, word) in out.chunks_mut(2).zip(words) {
                    for (j, d) in pair.iter_mut().enumerate() {
                        *d = f32::from_bits(((word >> (16 * j)) & 0xffff) << 16);
                    }
                }
            }
            Format::Q5_0 | Format::Q5_1 | Format::Q5K => {
                for (wi, (dst, &word)) in out.chunks_mut(vpw).zip(words).enumerate() {
                    let (s, m) = self.word_affine(row, wi);
                    let hi = self.high_bits(row, wi);
                    for (j, d) in dst.iter_mut().enumerate() {
                        let u = ((word >> (4 * j)) & 0xf) | (((hi >> j) & 1) << 4);
                        *d = u as f32 * s + m;
                    }
                }
            }
            Format::Q6K => {
                // the high bits of values 16i.. are word i of each super-block's last 16
                for (wi, (dst, &word)) in out.chunks_mut(vpw).zip(words).enumerate() {
                    let (s, _) = self.word_affine(row, wi);
                    let hi = self.high_bits(row, wi);
                    for (j, d) in dst.iter_mut().enumerate() {
                        let u = ((word >> (4 * j)) & 0xf) | (((hi >> (2 * j)) & 3) << 4);
                        *d = (u as i32 - 32) as f32 * s;
                    }
                }
            }
            Format::Q4 { .. } | Format::Q4_1 { .. } | Format::Q4K => {
                for (wi, (dst, &word)) in out.chunks_mut(vpw).zip(words).enumerate() {
                    let (s, m) = self.word_affine(row, wi);
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = ((word >> (4 * j)) & 0xf) as f32 * s + m;
                    }
                }
            }
        }
    }

    /// Dequantizes the whole weight to f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let (rows, cols) = self.rows_cols();
        let mut out = vec![0f32; rows * cols];
        if cols > 0 {
            for (r, chunk) in out.chunks_exact_mut(cols).enumerate() {
                self.dequantize_row(r, chunk);
            }
        }
        out
    }

    /// Half a quantization step at column `col` of `row`: the largest error round-to-nearest allows.
    pub fn half_step(&self, row: usize, col: usize) -> f32 {
        match self.format {
            Format::F32 | Format::F16 | Format::Bf16 => 0.0,
            _ => {
                let (s, _) = self.word_affine(row, col / self.format.values_per_word());
                s / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    const FORMATS: [Format; 15] = [
        Format::F32,
        Format::F16,
        Format::Q8,
        Format::Q8A8,
        Format::Q4 { group: 32 },
        Format::Q4 { group: 64 },
        Format::Q4 { group: 128 },
        Format::Q4_1 { group: 32 },
        Format::Q4_1 { group: 64 },
        Format::Q4_1 { group: 128 },
        Format::Q8_0 { group: 32 },
        Format::Q8_0 { group: 64 },
        Format::Bf16,
        Format::Q5_0,
        Format::Q5_1,
    ];

    /// `q4_k` and `q5_k` from floats: each value within one step of its group (its 15ths or
    /// 31sts of the group's range, widened by the 6-bit rounding of the step and the minimum),
    /// the GGUF packing of the scales read back, and rows of part super-blocks refused.
    #[test]
    fn k_quants_quantize_within_a_step() {
        let (rows, cols) = (3, 512);
        let v: Vec<f32> =
            (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.3 + (i % 64) as f32 * 0.01).collect();
        for (format, levels, bytes) in [(Format::Q4K, 15.0, 144), (Format::Q5K, 31.0, 176)] {
            let w = Weight::quantize("w", &[rows, cols], &v, format).unwrap();
            assert_eq!(w.packed_bytes(), rows * (cols / 256) * bytes, "GGUF's {bytes} bytes per super-block");
            let back = w.to_f32();
            for (g, (a, b)) in v.chunks(32).zip(back.chunks(32)).enumerate() {
                let lo = a.iter().fold(0f32, |m, x| m.min(*x));
                let hi = a.iter().fold(lo, |m, x| m.max(*x));
                let step = (hi - lo) / levels;
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= 1.1 * step + 0.02, "{format} group {g}: {x} -> {y} (step {step})");
                }
            }
            let e = Weight::quantize("w", &[2, 100], &[0.5; 200], format).unwrap_err().to_string();
            assert!(e.contains("super-blocks of 256"), "{e}");
            let e = Weight::from_packed("w", &[1, 32], format, vec![0; 4], vec![0; 12]).unwrap_err().to_string();
            assert!(e.contains("super-blocks of 256"), "{e}");
        }
    }

    #[test]
    fn round_trip_within_half_a_step() {
        for (i, &format) in FORMATS.iter().enumerate() {
            for &(rows, cols) in &[(1, 1), (3, 7), (5, 33), (4, 130), (2, 256), (7, 100)] {
                let v = random(rows * cols, i as u64 * 100 + cols as u64);
                let w = Weight::quantize("t", &[rows, cols], &v, format).unwrap();
                w.validate().unwrap();
                let back = w.to_f32();
                for r in 0..rows {
                    for c in 0..cols {
                        let (got, want) = (back[r * cols + c], v[r * cols + c]);
                        let tol = match format {
                            Format::F32 => 0.0,
                            Format::F16 => want.abs() * 1e-3,
                            Format::Bf16 => want.abs() * 4e-3,
                            // an f16-rounded minimum may sit above the true one by 2^-11 of it
                            Format::Q4_1 { .. } | Format::Q5_1 => w.half_step(r, c) * 1.0001 + want.abs() * 1e-3,
                            _ => w.half_step(r, c) * 1.0001,
                        };
                        assert!(
                            (got - want).abs() <= tol,
                            "{format} [{rows},{cols}] at ({r},{c}): got {got}, want {want}, tol {tol}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q8_matches_torch_rounding() {
        // scale 1/127 * 127 = 1: values at exact halves round to even
        let v = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -127.0, 3.0];
        let w = Weight::quantize("t", &[1, 8], &v, Format::Q8).unwrap();
        assert_eq!(f32::from_bits(w.scales[0]), 1.0);
        assert_eq!(w.to_f32(), vec![127.0, 0.0, 2.0, 2.0, -0.0, -2.0, -127.0, 3.0]);
    }

    #[test]
    fn q4_layout_is_documented_one() {
        let mut v = vec![0f32; 32];
        v[0] = 7.0;
        v[1] = -8.0;
        v[9] = 3.0;
        let w = Weight::quantize("t", &[1, 32], &v, Format::Q4 { group: 32 }).unwrap();
        // max|w| is 8, so the scale is f16(8/7)
        let s = half::f16::from_f32(8.0 / 7.0).to_f32();
        assert_eq!(w.scales.len(), 1);
        assert_eq!(f16::from_bits(w.scales[0] as u16).to_f32(), s);
        let q0 = (7.0f32 / s).round_ties_even() as u32 + 8;
        assert_eq!(w.words[0] & 0xf, q0);
        assert_eq!((w.words[0] >> 4) & 0xf, 1); // -8 / (8/7) = -7, stored as -7 + 8
        assert_eq!((w.words[1] >> 4) & 0xf, (3.0f32 / s).round_ties_even() as u32 + 8);
    }

    #[test]
    fn rejects_inconsistent_packing() {
        let w = Weight::quantize("t", &[4, 64], &random(256, 1), Format::Q4 { group: 32 }).unwrap();
        let err = Weight::from_packed("t", &[4, 65], w.format, w.words.clone(), w.scales.clone()).unwrap_err();
        assert!(err.to_string().contains("needs"), "{err}");
        assert!(Weight::quantize("t", &[2, 2], &[0.0; 3], Format::F32).is_err());
        assert!(Weight::quantize("t", &[2, 32], &[0.0; 64], Format::Q4 { group: 48 }).is_err());
    }

    /// Little-endian f32/f16/bf16 bytes make the weight `quantize` makes of the same values
    /// (which each of these formats holds exactly), ragged rows, empty shapes and NaN bits
    /// included; lengths that do not match and other formats are refused.
    #[test]
    fn float_bytes_are_kept_bit_for_bit() {
        for (rows, cols) in [(3, 5), (2, 64), (1, 1), (4, 7), (0, 3), (3, 0)] {
            let shape = [rows, cols];
            let v = random(rows * cols, (rows * 31 + cols) as u64);
            let cases: [(Format, Vec<u8>); 3] = [
                (Format::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                (Format::F16, v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect()),
                (Format::Bf16, v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()),
            ];
            for (format, bytes) in cases {
                let w = Weight::from_le_bytes("t", &shape, format, &bytes).unwrap();
                let exact = Weight::quantize("t", &shape, &w.to_f32(), format).unwrap();
                assert_eq!(w.words, exact.words, "{format} {shape:?}");
                let q = Weight::quantize("t", &shape, &v, format).unwrap();
                assert_eq!(w.words, q.words, "{format} {shape:?}");
                if !bytes.is_empty() {
                    let short = Weight::from_le_bytes("t", &shape, format, &bytes[1..]).unwrap_err();
                    assert!(short.to_string().contains("t"), "{short}");
                }
            }
        }
        let nan = f16::from_bits(0x7e01);
        let w = Weight::from_le_bytes("n", &[1, 1], Format::F16, &nan.to_le_bytes()).unwrap();
        assert_eq!(w.words, [0x7e01]);
        assert!(Weight::from_le_bytes("t", &[1, 2], Format::Q8, &[0; 2]).is_err());
        assert!(Weight::from_le_bytes("t", &[2, 2], Format::F32, &[0; 12]).is_err());
    }

    #[test]
    fn zero_rows_do_not_divide_by_zero() {
        for &format in &FORMATS {
            let w = Weight::quantize("z", &[2, 40], &[0.0; 80], format).unwrap();
            assert!(w.to_f32().iter().all(|v| *v == 0.0), "{format}");
        }
    }
}
