//! GGUF, llama.cpp's model file (versions 2 and 3), read from a byte slice.
//!
//! ```text
//! "GGUF" | version u32 | tensor count u64 | metadata count u64
//! metadata, each: key (u64 length + UTF-8) | value type u32 | value
//! tensor infos, each: name | dimension count u32 | dimensions u64 (innermost first) | type u32 | offset u64
//! padding up to `general.alignment` (32 when absent) | tensor data, each tensor at its offset from here
//! ```
//!
//! Integers are little-endian; a string is a u64 length and that many bytes of UTF-8; an array is
//! an element type u32, a u64 count and the elements. The reader checks every count, length,
//! dimension and offset against the bytes that remain before it allocates for them, so a
//! truncated or hostile file gets an error that names the field, never a panic and never an
//! allocation sized by an unchecked header field. Tensor data is borrowed, not copied.
//!
//! [`GgmlType`] names the tensor types wedge reads; [`dequantize`] is their plain f32
//! definition (llama.cpp's `dequantize_row_*`, in the same order of operations), the twin that
//! faster kernels are tested against; [`Gguf::weight`] repacks a tensor into the wedge
//! [`Weight`] that holds the same values exactly, where there is one.

use std::collections::HashSet;
use std::fmt::Display;

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::quant::{Format, Weight};

const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of every tensor in it when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's limit on a tensor's dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are refused (real files nest none).
const MAX_NESTING: usize = 4;

fn err(msg: impl Into<String>) -> Error {
    Error::Gguf(msg.into())
}

/// A tensor type of ggml that wedge reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: f16 scale, 4-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// Blocks of 32: f16 scale, 5-bit values offset by 16 (the fifth bits in a u32).
    Q5_0,
    /// Blocks of 32: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// Blocks of 32: f16 scale, 8-bit values.
    Q8_0,
    /// Super-blocks of 256: f16 scale and minimum, eight 6-bit sub-scales and minimums, 4-bit values.
    Q4_K,
    /// As `Q4_K` with 5-bit values.
    Q5_K,
    /// Super-blocks of 256: f16 scale, sixteen 8-bit sub-scales, 6-bit values offset by 32.
    Q6_K,
}

impl GgmlType {
    /// Every type wedge reads, for error messages.
    pub const ALL: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// ggml's number for the type.
    pub fn code(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// The type of ggml's number `code`, if wedge reads it.
    pub fn from_code(code: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// llama.cpp's name for the type (`Q4_K`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    /// Bytes of `n` values, or `None` when `n` is not a whole number of blocks or overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let len = self.block_len() as u64;
        n.is_multiple_of(len).then(|| (n / len).checked_mul(self.block_bytes() as u64)).flatten()
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn supported_types() -> String {
    GgmlType::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `UINT8`
    U8(u8),
    /// `INT8`
    I8(i8),
    /// `UINT16`
    U16(u16),
    /// `INT16`
    I16(i16),
    /// `UINT32`
    U32(u32),
    /// `INT32`
    I32(i32),
    /// `FLOAT32`
    F32(f32),
    /// `BOOL`
    Bool(bool),
    /// `STRING`
    String(String),
    /// `ARRAY`
    Array(Array),
    /// `UINT64`
    U64(u64),
    /// `INT64`
    I64(i64),
    /// `FLOAT64`
    F64(f64),
}

/// A metadata array, kept by element type so that it takes no more memory than its bytes in
/// the file (the token list of a 49k vocabulary is one `Vec<String>`).
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's name (`u32`, `strings`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "u8",
            Array::I8(_) => "i8",
            Array::U16(_) => "u16",
            Array::I16(_) => "i16",
            Array::U32(_) => "u32",
            Array::I32(_) => "i32",
            Array::F32(_) => "f32",
            Array::Bool(_) => "bool",
            Array::String(_) => "strings",
            Array::Array(_) => "arrays",
            Array::U64(_) => "u64",
            Array::I64(_) => "i64",
            Array::F64(_) => "f64",
        }
    }

    /// The array as JSON (a non-finite float becomes `null`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Array::U8(v) => json!(v),
            Array::I8(v) => json!(v),
            Array::U16(v) => json!(v),
            Array::I16(v) => json!(v),
            Array::U32(v) => json!(v),
            Array::I32(v) => json!(v),
            Array::F32(v) => json!(v),
            Array::Bool(v) => json!(v),
            Array::String(v) => json!(v),
            Array::Array(v) => serde_json::Value::Array(v.iter().map(Array::to_json).collect()),
            Array::U64(v) => json!(v),
            Array::I64(v) => json!(v),
            Array::F64(v) => json!(v),
        }
    }

    /// The elements as integers, when they are integers.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            Array::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<_>>()?,
            Array::I64(v) => v.clone(),
            _ => return None,
        })
    }

    /// The elements as floats, when they are floats (SentencePiece scores).
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        Some(match self {
            Array::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Array::F64(v) => v.clone(),
            _ => return None,
        })
    }
}

impl Value {
    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A number of any type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as JSON (a non-finite float becomes `null`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::U8(x) => json!(x),
            Value::I8(x) => json!(x),
            Value::U16(x) => json!(x),
            Value::I16(x) => json!(x),
            Value::U32(x) => json!(x),
            Value::I32(x) => json!(x),
            Value::F32(x) => json!(x),
            Value::Bool(x) => json!(x),
            Value::String(x) => json!(x),
            Value::Array(a) => a.to_json(),
            Value::U64(x) => json!(x),
            Value::I64(x) => json!(x),
            Value::F64(x) => json!(x),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }
}

/// One tensor's entry in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions as ggml orders them: the innermost (contiguous) first, so a matrix of `rows`
    /// rows of `cols` values is `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
    /// Bytes of its data.
    pub size: u64,
}

impl TensorInfo {
    /// Number of values.
    pub fn len(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Whether it has no values (never, for a table the reader accepted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape outermost first, as wedge and PyTorch order it (`[rows, cols]`).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file: its metadata and tensor table, and the bytes of its data section.
#[derive(Debug)]
pub struct Gguf<'a> {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor table in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of each tensor.
    pub alignment: u64,
    /// Offset of the data section in the file.
    pub data_offset: u64,
    /// Offset where the metadata ends (and the tensor table starts).
    pub metadata_end: u64,
    data: &'a [u8],
}

impl<'a> Gguf<'a> {
    /// Parses and checks a whole file.
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>> {
        let mut g = Gguf::parse_head(bytes, bytes.len() as u64)?;
        g.data = bytes.get(g.data_offset as usize..).unwrap_or_default();
        Ok(g)
    }

    /// Parses and checks the header (metadata and tensor table) of a file of `file_len` bytes
    /// from its first bytes, `head`, without its tensor data: every tensor is checked to lie
    /// within the file, and read with [`Gguf::weight_from`] from bytes read elsewhere (a model
    /// loads tensor by tensor, never holding the whole file and its weights at once). A head too
    /// short for the header is an error, like a truncated file.
    pub fn parse_head(head: &'a [u8], file_len: u64) -> Result<Gguf<'a>> {
        let bytes = head;
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(err(format!("not a GGUF file (magic {magic:02x?}, want \"GGUF\")")));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(err(format!("version {version} is not supported (2 and 3 are)")));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata count")?;
        // the smallest entries: a key of one byte, a type and a u8 value; a one-byte name, one
        // dimension, a type and an offset
        r.fits(kv_count, 8 + 1 + 4 + 1, "metadata count")?;
        r.fits(tensor_count, 8 + 1 + 4 + 8 + 4 + 8, "tensor count")?;

        let mut metadata = Vec::new();
        let mut keys = HashSet::new();
        for i in 0..kv_count {
            let key = r.string(format_args!("metadata key {i}"))?;
            let ty = r.u32(format_args!("type of `{key}`"))?;
            let value = r.value(ty, &key, 0)?;
            if !keys.insert(key.clone()) {
                return Err(err(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }
        let metadata_end = r.pos as u64;
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                _ => return Err(err(format!("general.alignment {v:?} is not a power of two up to 65536"))),
            },
        };

        let mut tensors = Vec::new();
        let mut names = HashSet::new();
        for i in 0..tensor_count {
            let name = r.string(format_args!("tensor {i} name"))?;
            let n_dims = r.u32(format_args!("dimension count of `{name}`"))? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(format!("tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} are valid)")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for d in 0..n_dims {
                dims.push(r.u64(format_args!("dimension {d} of `{name}`"))?);
            }
            let code = r.u32(format_args!("type of `{name}`"))?;
            let offset = r.u64(format_args!("offset of `{name}`"))?;
            let ty = GgmlType::from_code(code).ok_or_else(|| {
                err(format!("tensor `{name}` has ggml type {code}, which wedge does not read ({})", supported_types()))
            })?;
            let n = dims
                .iter()
                .try_fold(1u64, |acc, &d| if d == 0 { None } else { acc.checked_mul(d) })
                .filter(|&n| usize::try_from(n).is_ok())
                .ok_or_else(|| err(format!("tensor `{name}` has dimensions {dims:?}: zero or too many values")))?;
            if !dims[0].is_multiple_of(ty.block_len() as u64) {
                return Err(err(format!(
                    "tensor `{name}` ({ty}): its rows of {} values are not whole blocks of {}",
                    dims[0],
                    ty.block_len()
                )));
            }
            let size = ty.bytes_for(n).ok_or_else(|| err(format!("tensor `{name}` ({ty}): {n} values overflow")))?;
            if offset % alignment != 0 {
                return Err(err(format!(
                    "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(err(format!("tensor `{name}` appears twice")));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, size });
        }

        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        if data_offset > file_len && !tensors.is_empty() {
            return Err(err(format!(
                "truncated: the data section would start at {data_offset}, past the end ({file_len})"
            )));
        }
        let data_len = file_len.saturating_sub(data_offset);
        for t in &tensors {
            let end = t.offset.checked_add(t.size);
            if end.is_none_or(|e| e > data_len) {
                return Err(err(format!(
                    "tensor `{}`: bytes {}..{} of the data section are past its end ({data_len} bytes; the file is truncated?)",
                    t.name,
                    t.offset,
                    t.offset.saturating_add(t.size),
                )));
            }
        }
        Ok(Gguf { version, metadata, tensors, alignment, data_offset, metadata_end, data: &[] })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A metadata string, or an error naming the key.
    pub fn str(&self, key: &str) -> Result<&str> {
        self.need(key)?.as_str().ok_or_else(|| self.wrong(key, "a string"))
    }

    /// A metadata non-negative integer, or an error naming the key.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.need(key)?.as_u64().ok_or_else(|| self.wrong(key, "a non-negative integer"))
    }

    /// A metadata number, or an error naming the key.
    pub fn f64(&self, key: &str) -> Result<f64> {
        self.need(key)?.as_f64().ok_or_else(|| self.wrong(key, "a number"))
    }

    fn need(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| err(format!("metadata `{key}` is missing")))
    }

    fn wrong(&self, key: &str, want: &str) -> Error {
        let got = self.get(key).map_or("nothing", Value::type_name);
        err(format!("metadata `{key}` is {got}, not {want}"))
    }

    /// A tensor's entry by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A GGUF file of this one's metadata alone (no tensors): the header and metadata bytes of
    /// `bytes`, the file this was parsed from, with the tensor count set to zero. A language
    /// model's vocabulary and chat template travel in a `.wedge` package this way, in their
    /// own format.
    pub fn metadata_only(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes[..self.metadata_end as usize].to_vec();
        out[8..16].copy_from_slice(&0u64.to_le_bytes());
        out
    }

    /// A tensor's bytes (checked against the file when it was parsed; empty where only the
    /// header was parsed, [`Gguf::parse_head`]).
    pub fn data(&self, t: &TensorInfo) -> &'a [u8] {
        self.data.get(t.offset as usize..(t.offset + t.size) as usize).unwrap_or_default()
    }

    /// Where tensor `t`'s bytes start in the file.
    pub fn file_offset(&self, t: &TensorInfo) -> u64 {
        self.data_offset + t.offset
    }
}

impl Gguf<'_> {
    /// A tensor as a wedge [`Weight`] that holds exactly its values, at its own size: F32, F16
    /// and BF16 as they are, Q4_0 as `q4`, Q4_1 as `q4_1` and Q8_0 as `q8_0` in groups of 32,
    /// Q5_0, Q5_1, Q4_K, Q5_K and Q6_K as the wedge formats of those names (the same scales,
    /// minimums and values, with the nibbles reordered and any high bits moved beside the
    /// scales). Nothing is requantized.
    pub fn weight(&self, t: &TensorInfo) -> Result<Weight> {
        Gguf::weight_from(t, self.data(t))
    }

    /// [`Gguf::weight`] from the tensor's bytes (`t.size` of them, from
    /// [`Gguf::file_offset`]), read by the caller.
    pub fn weight_from(t: &TensorInfo, data: &[u8]) -> Result<Weight> {
        if data.len() as u64 != t.size {
            return Err(err(format!("tensor `{}`: {} bytes given, it has {}", t.name, data.len(), t.size)));
        }
        let shape = t.shape();
        let (format, packed, scales) = match t.ty {
            // as they are, bit for bit
            GgmlType::F32 => return Weight::from_le_bytes(&t.name, &shape, Format::F32, data),
            GgmlType::F16 => return Weight::from_le_bytes(&t.name, &shape, Format::F16, data),
            GgmlType::BF16 => return Weight::from_le_bytes(&t.name, &shape, Format::Bf16, data),
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let one = matches!(t.ty, GgmlType::Q4_1 | GgmlType::Q5_1);
                let five = matches!(t.ty, GgmlType::Q5_0 | GgmlType::Q5_1);
                // a block: d (and m), the 32 fifth bits as a word (bit j for value j), 16 bytes
                let head = if one { 4 } else { 2 } + if five { 4 } else { 0 };
                let blocks = data.chunks_exact(t.ty.block_bytes());
                let mut w = Vec::with_capacity(4 * blocks.len());
                let mut s = Vec::with_capacity(match (one, five) {
                    (false, false) => blocks.len().div_ceil(2),
                    (true, false) => blocks.len(),
                    (false, true) => 3 * blocks.len().div_ceil(2),
                    (true, true) => 2 * blocks.len(),
                });
                for (i, b) in blocks.enumerate() {
                    let qs = &b[head..head + 16];
                    // GGUF: byte j holds value j (low nibble) and value j + 16 (high nibble);
                    // wedge: nibble j of word i holds value 8i + j
                    for word in 0..4 {
                        let mut v = 0u32;
                        for j in 0..8 {
                            let k = 8 * word + j;
                            let nib = if k < 16 { qs[k] & 0x0f } else { qs[k - 16] >> 4 };
                            v |= u32::from(nib) << (4 * j);
                        }
                        w.push(v);
                    }
                    let d = u32::from(u16::from_le_bytes([b[0], b[1]]));
                    let fifth = || u32::from_le_bytes([b[head - 4], b[head - 3], b[head - 2], b[head - 1]]);
                    if one {
                        s.push(d | u32::from(u16::from_le_bytes([b[2], b[3]])) << 16);
                        if five {
                            s.push(fifth());
                        }
                    } else if five {
                        // q5_0: per pair of groups, the two scales' word then both groups' bits
                        if i % 2 == 0 {
                            s.extend([d, fifth(), 0]);
                        } else if let [.., pair, _, bits] = s.as_mut_slice() {
                            *pair |= d << 16;
                            *bits = fifth();
                        }
                    } else if i % 2 == 0 {
                        s.push(d);
                    } else if let Some(last) = s.last_mut() {
                        *last |= d << 16;
                    }
                }
                let format = match t.ty {
                    GgmlType::Q4_0 => Format::Q4 { group: 32 },
                    GgmlType::Q4_1 => Format::Q4_1 { group: 32 },
                    GgmlType::Q5_0 => Format::Q5_0,
                    _ => Format::Q5_1,
                };
                (format, w, s)
            }
            GgmlType::Q8_0 => {
                // a block: the f16 scale, then 32 i8 values in order, which is wedge's byte order
                let blocks = data.chunks_exact(t.ty.block_bytes());
                let mut w = Vec::with_capacity(8 * blocks.len());
                let mut s = Vec::with_capacity(blocks.len().div_ceil(2));
                for (i, b) in blocks.enumerate() {
                    w.extend(b[2..34].chunks_exact(4).map(|q| u32::from_le_bytes([q[0], q[1], q[2], q[3]])));
                    let d = u32::from(u16::from_le_bytes([b[0], b[1]]));
                    if i % 2 == 0 {
                        s.push(d);
                    } else if let Some(last) = s.last_mut() {
                        *last |= d << 16;
                    }
                }
                (Format::Q8_0 { group: 32 }, w, s)
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                // a block: f16 d and dmin, 12 bytes of 6-bit scales and minimums (kept as they
                // are), (Q5_K: 32 bytes whose bit j of byte l is the fifth bit of value
                // 32j + l,) then 128 bytes: for each 64 values, 32 bytes whose low nibbles are
                // the first 32 values and whose high nibbles the next 32
                let five = t.ty == GgmlType::Q5_K;
                let blocks = data.chunks_exact(t.ty.block_bytes());
                let mut w = Vec::with_capacity(32 * blocks.len());
                let mut s = Vec::with_capacity(if five { 12 } else { 4 } * blocks.len());
                for b in blocks {
                    s.extend(b[..16].chunks_exact(4).map(|q| u32::from_le_bytes([q[0], q[1], q[2], q[3]])));
                    let qs = if five {
                        let qh = &b[16..48];
                        s.extend((0..8).map(|j| (0..32).fold(0u32, |v, l| v | u32::from((qh[l] >> j) & 1) << l)));
                        &b[48..176]
                    } else {
                        &b[16..144]
                    };
                    for word in 0..32 {
                        let mut v = 0u32;
                        for j in 0..8 {
                            let k = 8 * word + j;
                            let byte = qs[32 * (k / 64) + k % 32];
                            let nib = if k % 64 < 32 { byte & 0x0f } else { byte >> 4 };
                            v |= u32::from(nib) << (4 * j);
                        }
                        w.push(v);
                    }
                }
                (if five { Format::Q5K } else { Format::Q4K }, w, s)
            }
            GgmlType::Q6_K => {
                // a block: 128 bytes of low nibbles, 64 of high bit pairs, 16 i8 scales, f16 d;
                // value i of each half of 128 (quarter q, lane l) has its low nibble in byte
                // l + 32·(q % 2) of the half's 64 (low nibble for q < 2) and its high bits at
                // 2q in byte l of the half's 32
                let blocks = data.chunks_exact(t.ty.block_bytes());
                let mut w = Vec::with_capacity(32 * blocks.len());
                let mut s = Vec::with_capacity(crate::quant::Q6K_WORDS * blocks.len());
                for b in blocks {
                    let (ql, qh) = (&b[..128], &b[128..192]);
                    let u = |i: usize| {
                        let (n, q, l) = (i / 128, (i % 128) / 32, i % 32);
                        let low = ql[64 * n + l + 32 * (q % 2)];
                        let low = if q < 2 { low & 0xf } else { low >> 4 };
                        u32::from(low) | (u32::from((qh[32 * n + l] >> (2 * q)) & 3) << 4)
                    };
                    let start = s.len();
                    s.push(u32::from(u16::from_le_bytes([b[208], b[209]])));
                    s.extend(b[192..208].chunks_exact(4).map(|q| u32::from_le_bytes([q[0], q[1], q[2], q[3]])));
                    s.resize(start + crate::quant::Q6K_WORDS, 0);
                    for word in 0..32 {
                        w.push((0..8).fold(0u32, |v, j| v | ((u(8 * word + j) & 0xf) << (4 * j))));
                    }
                    for i in 0..256 {
                        s[start + 5 + i / 16] |= (u(i) >> 4) << (2 * (i % 16));
                    }
                }
                (Format::Q6K, w, s)
            }
        };
        Weight::from_packed(&t.name, &shape, format, packed, scales)
    }
}

/// A cursor over the file that checks every read against what remains. `what` names the
/// field in an error, and is formatted only then: a vocabulary is some 100k strings.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($($name:ident: $t:ty),*) => {$(
        fn $name(&mut self, what: impl Display) -> Result<$t> {
            let b = self.take(size_of::<$t>(), what)?;
            let mut a = [0u8; size_of::<$t>()];
            a.copy_from_slice(b);
            Ok(<$t>::from_le_bytes(a))
        }
    )*};
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: impl Display) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(err(format!(
                "truncated: {what} needs {n} bytes at offset {}, {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let b = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    /// `count` items of at least `min` bytes each must fit in what remains.
    fn fits(&self, count: u64, min: u64, what: impl Display) -> Result<usize> {
        match count.checked_mul(min) {
            Some(need) if need <= self.remaining() as u64 => Ok(count as usize),
            _ => Err(err(format!(
                "{what} {count} cannot fit in the {} bytes left at offset {} (truncated or corrupt)",
                self.remaining(),
                self.pos
            ))),
        }
    }

    read_le!(u8_: u8, i8_: i8, u16_: u16, i16_: i16, u32: u32, i32_: i32, f32_: f32, u64: u64, i64_: i64, f64_: f64);

    fn string(&mut self, what: impl Display + Copy) -> Result<String> {
        let len = self.u64(format_args!("length of {what}"))?;
        let n = self.fits(len, 1, format_args!("length of {what}"))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|e| err(format!("{what} is not UTF-8: {e}")))
    }

    fn bool(&mut self, what: impl Display + Copy) -> Result<bool> {
        match self.u8_(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(err(format!("{what}: {b} is not a boolean (0 or 1)"))),
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8_(key)?),
            1 => Value::I8(self.i8_(key)?),
            2 => Value::U16(self.u16_(key)?),
            3 => Value::I16(self.i16_(key)?),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.i32_(key)?),
            6 => Value::F32(self.f32_(key)?),
            7 => Value::Bool(self.bool(key)?),
            8 => Value::String(self.string(format_args!("`{key}`"))?),
            9 => Value::Array(self.array(key, depth)?),
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.i64_(key)?),
            12 => Value::F64(self.f64_(key)?),
            t => return Err(err(format!("metadata `{key}` has value type {t} (0 to 12 are valid)"))),
        })
    }

    fn array(&mut self, key: &str, depth: usize) -> Result<Array> {
        if depth >= MAX_NESTING {
            return Err(err(format!("metadata `{key}`: arrays nested deeper than {MAX_NESTING}")));
        }
        let ty = self.u32(format_args!("element type of `{key}`"))?;
        let count = self.u64(format_args!("length of `{key}`"))?;
        let min = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            t => return Err(err(format!("metadata `{key}` holds elements of type {t} (0 to 12 are valid)"))),
        };
        let n = self.fits(count, min, format_args!("length of `{key}`"))?;
        macro_rules! many {
            ($variant:ident, $read:ident) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.$read(key)?);
                }
                Array::$variant(v)
            }};
        }
        Ok(match ty {
            0 => many!(U8, u8_),
            1 => many!(I8, i8_),
            2 => many!(U16, u16_),
            3 => many!(I16, i16_),
            4 => many!(U32, u32),
            5 => many!(I32, i32_),
            6 => many!(F32, f32_),
            7 => many!(Bool, bool),
            10 => many!(U64, u64),
            11 => many!(I64, i64_),
            12 => many!(F64, f64_),
            8 => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(format_args!("`{key}`[{i}]"))?);
                }
                Array::String(v)
            }
            _ => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

/// Dequantizes `bytes` of type `ty` into `out` (one value per slot): llama.cpp's definition,
/// in its order of operations.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let bl = ty.block_len();
    if ty.bytes_for(out.len() as u64) != Some(bytes.len() as u64) {
        return Err(err(format!("{ty}: {} bytes do not hold {} values", bytes.len(), out.len())));
    }
    let h = |b: &[u8], at: usize| f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32();
    let blocks = bytes.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(bl));
    match ty {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = h(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in blocks {
                let (d, qs) = (h(b, 0), &b[2..18]);
                for j in 0..16 {
                    y[j] = (i32::from(qs[j] & 0x0f) - 8) as f32 * d;
                    y[j + 16] = (i32::from(qs[j] >> 4) - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in blocks {
                let (d, m, qs) = (h(b, 0), h(b, 2), &b[4..20]);
                for j in 0..16 {
                    y[j] = f32::from(qs[j] & 0x0f) * d + m;
                    y[j + 16] = f32::from(qs[j] >> 4) * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, y) in blocks {
                let (d, qh, qs) = (h(b, 0), u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22]);
                for j in 0..16 {
                    let (lo, hi) = fifth_bits(qh, j);
                    y[j] = ((i32::from(qs[j] & 0x0f) | lo) - 16) as f32 * d;
                    y[j + 16] = ((i32::from(qs[j] >> 4) | hi) - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (b, y) in blocks {
                let (d, m) = (h(b, 0), h(b, 2));
                let (qh, qs) = (u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..24]);
                for j in 0..16 {
                    let (lo, hi) = fifth_bits(qh, j);
                    y[j] = (i32::from(qs[j] & 0x0f) | lo) as f32 * d + m;
                    y[j + 16] = (i32::from(qs[j] >> 4) | hi) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in blocks {
                let d = h(b, 0);
                for j in 0..32 {
                    y[j] = f32::from(b[2 + j] as i8) * d;
                }
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let five = ty == GgmlType::Q5_K;
            for (b, y) in blocks {
                let (d, dmin, scales) = (h(b, 0), h(b, 2), &b[4..16]);
                let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                // four runs of 64 values: the low nibbles of 32 bytes, then their high nibbles
                for run in 0..4 {
                    let q = &qs[32 * run..32 * run + 32];
                    for half in 0..2 {
                        let sub = 2 * run + half;
                        let (sc, m) = scale_min_k4(sub, scales);
                        let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
                        for l in 0..32 {
                            let mut v = if half == 0 { q[l] & 0x0f } else { q[l] >> 4 };
                            if five && qh[l] & (1 << sub) != 0 {
                                v += 16;
                            }
                            y[64 * run + 32 * half + l] = d1 * f32::from(v) - m1;
                        }
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (b, y) in blocks {
                let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], h(b, 208));
                // two halves of 128 values, each from 64 bytes of ql and 32 of qh
                for n in 0..2 {
                    let (ql, qh, sc, y) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..], &mut y[128 * n..]);
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |low: u8, shift: u32| (i32::from(low) | (i32::from((qh[l] >> shift) & 3) << 4)) - 32;
                        let s = |k: usize| d * f32::from(sc[is + k] as i8);
                        y[l] = s(0) * q(ql[l] & 0x0f, 0) as f32;
                        y[l + 32] = s(2) * q(ql[l + 32] & 0x0f, 2) as f32;
                        y[l + 64] = s(4) * q(ql[l] >> 4, 4) as f32;
                        y[l + 96] = s(6) * q(ql[l + 32] >> 4, 6) as f32;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The fifth bits of values `j` and `j + 16` of a Q5 block, at bit 4.
fn fifth_bits(qh: u32, j: usize) -> (i32, i32) {
    (((qh >> j) << 4 & 0x10) as i32, ((qh >> (j + 12)) & 0x10) as i32)
}

/// Sub-block `j`'s 6-bit scale and minimum from a K-quant's 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little GGUF writer for the tests (the fixtures from llama.cpp's own Python writer are
    /// in the integration tests).
    struct W(Vec<u8>);

    impl W {
        fn header(version: u32, tensors: u64, kvs: u64) -> W {
            let mut w = W(b"GGUF".to_vec());
            w.u32(version);
            w.u64(tensors);
            w.u64(kvs);
            w
        }
        fn u32(&mut self, v: u32) {
            self.0.extend(v.to_le_bytes());
        }
        fn u64(&mut self, v: u64) {
            self.0.extend(v.to_le_bytes());
        }
        fn str(&mut self, s: &str) {
            self.u64(s.len() as u64);
            self.0.extend(s.as_bytes());
        }
        fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) {
            self.str(name);
            self.u32(dims.len() as u32);
            for &d in dims {
                self.u64(d);
            }
            self.u32(ty);
            self.u64(offset);
        }
        fn pad(&mut self, to: usize) {
            while !self.0.len().is_multiple_of(to) {
                self.0.push(0);
            }
        }
    }

    fn small() -> Vec<u8> {
        let mut w = W::header(3, 2, 3);
        w.str("general.architecture");
        w.u32(8);
        w.str("llama");
        w.str("tokens");
        w.u32(9);
        w.u32(8);
        w.u64(2);
        w.str("a");
        w.str("bc");
        w.str("eps");
        w.u32(6);
        w.0.extend(1e-5f32.to_le_bytes());
        w.tensor("w", &[32, 2], 8, 0);
        w.tensor("n", &[4], 0, 96);
        w.pad(32);
        let mut q = vec![0u8; 68];
        q[0..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        q[2] = 3;
        q[2 + 31] = 0xff; // -1
        w.0.extend(&q);
        w.pad(32);
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            w.0.extend(v.to_le_bytes());
        }
        w.0
    }

    #[test]
    fn a_small_file_reads_back() {
        let bytes = small();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get("tokens").unwrap().as_array(), Some(&Array::String(vec!["a".into(), "bc".into()])));
        assert!((g.f64("eps").unwrap() - 1e-5).abs() < 1e-9);
        let w = g.tensor("w").unwrap();
        assert_eq!((w.shape(), w.ty, w.size), (vec![2, 32], GgmlType::Q8_0, 68));
        let mut out = vec![0f32; 64];
        dequantize(w.ty, g.data(w), &mut out).unwrap();
        assert_eq!((out[0], out[31], out[32]), (1.5, -0.5, 0.0));
        let n = g.tensor("n").unwrap();
        let mut v = vec![0f32; 4];
        dequantize(n.ty, g.data(n), &mut v).unwrap();
        assert_eq!(v, [1.0, 2.0, 3.0, 4.0]);
        assert!(g.u64("eps").unwrap_err().to_string().contains("`eps` is f32, not a non-negative integer"));
        assert!(g.str("missing").unwrap_err().to_string().contains("`missing` is missing"));
    }

    #[test]
    fn hostile_counts_and_fields_are_named() {
        let case = |w: W| Gguf::parse(&w.0).unwrap_err().to_string();
        assert!(case(W::header(3, u64::MAX, 0)).contains("tensor count"));
        assert!(case(W::header(3, 0, 1 << 40)).contains("metadata count"));
        assert!(case(W::header(1, 0, 0)).contains("version 1"));
        let mut w = W::header(3, 0, 1);
        w.str("k");
        w.u32(8);
        w.u64(u64::MAX);
        assert!(case(w).contains("length of `k`"));
        let mut w = W::header(3, 0, 1);
        w.str("k");
        w.u32(9);
        w.u32(4);
        w.u64(1 << 60);
        assert!(case(w).contains("length of `k`"));
        let mut w = W::header(3, 0, 1);
        w.str("k");
        w.u32(13);
        w.u64(0);
        assert!(case(w).contains("value type 13"));
        let tensor = |dims: &[u64], ty: u32, offset: u64| {
            let mut w = W::header(3, 1, 0);
            w.tensor("t", dims, ty, offset);
            w.pad(32);
            w.0.extend([0u8; 64]);
            Gguf::parse(&w.0).unwrap_err().to_string()
        };
        assert!(tensor(&[u64::MAX, u64::MAX], 0, 0).contains("too many values"));
        assert!(tensor(&[0], 0, 0).contains("zero"));
        assert!(tensor(&[1, 1, 1, 1, 1], 0, 0).contains("5 dimensions"));
        assert!(tensor(&[16], 2, 0).contains("whole blocks of 32"));
        assert!(tensor(&[32], 0, 0).contains("past its end"));
        assert!(tensor(&[4], 0, 7).contains("alignment"));
        assert!(tensor(&[4], 0, u64::MAX - 31).contains("past its end"));
        let unknown = tensor(&[256], 10, 0);
        assert!(unknown.contains("ggml type 10") && unknown.contains("Q4_K, Q5_K, Q6_K"), "{unknown}");
    }

    #[test]
    fn block_sizes_match_ggml() {
        // (values, bytes) per block, as ggml's type traits give them
        let want = [(0, 1, 4), (1, 1, 2), (30, 1, 2), (2, 32, 18), (3, 32, 20), (6, 32, 22), (7, 32, 24)];
        let want_k = [(8, 32, 34), (12, 256, 144), (13, 256, 176), (14, 256, 210)];
        for (code, len, bytes) in want.into_iter().chain(want_k) {
            let t = GgmlType::from_code(code).unwrap();
            assert_eq!((t.block_len(), t.block_bytes()), (len, bytes), "{t}");
        }
    }
}
