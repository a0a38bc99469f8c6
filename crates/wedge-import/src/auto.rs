//! Mixed precision by measured sensitivity (`--quant auto`).
//!
//! Each candidate tensor (the encoder's linears and its embedding tables) is
//! quantized to q4 alone and the damage measured on calibration texts; tensors
//! are then ordered by damage per byte that a higher precision would cost, and
//! the smallest prefix of that order promoted to q8 (then f16, if q8 everywhere is
//! not enough) that meets the quality budget is kept. The measurement itself is the
//! caller's: it gets the candidate weights and returns the mean cosine similarity of
//! the model's outputs to the f32 model's on the calibration texts.

use std::collections::BTreeMap;

use wedge_core::quant::{Format, Weight};

use crate::{F32Tensor, ImportError, ImportOptions, format_for, is_linear};

/// Calibration texts shipped with the converter (not the test texts).
pub const CALIBRATION_TEXTS: &str = include_str!("../data/calibration.txt");

/// The calibration texts, one per line.
pub fn calibration_texts() -> Vec<&'static str> {
    CALIBRATION_TEXTS.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// What `auto` chose and why.
#[derive(Clone, Debug)]
pub struct AutoChoice {
    /// The options to import with.
    pub options: ImportOptions,
    /// Mean cosine to the f32 model on the calibration texts.
    pub score: f64,
    /// Packed bytes of all weights.
    pub bytes: usize,
    /// Per candidate tensor: the mean cosine with only it at q4.
    pub sensitivity: Vec<(String, f64)>,
    /// Number of evaluations run.
    pub evaluations: usize,
}

/// True for the tensors `auto` chooses a format for.
pub fn is_candidate(name: &str, shape: &[usize]) -> bool {
    is_linear(name, shape) || (shape.len() == 2 && shape[0] > 16)
}

fn quantize_all(weights: &[F32Tensor], opts: &ImportOptions) -> Result<Vec<Weight>, ImportError> {
    weights.iter().map(|(n, s, v)| Ok(Weight::quantize(n, s, v, format_for(opts, n, s))?)).collect()
}

/// Picks a format per tensor: the smallest model whose calibration score reaches `budget`.
/// `eval` returns the mean cosine to the f32 model for a full set of weights.
pub fn auto_select(
    weights: &[F32Tensor],
    budget: f64,
    group: u32,
    eval: &mut dyn FnMut(&[Weight]) -> Result<f64, ImportError>,
    log: &mut dyn FnMut(&str),
) -> Result<AutoChoice, ImportError> {
    let q4 = Format::Q4 { group };
    q4.validate().map_err(ImportError::Unsupported)?;
    let f32_all = ImportOptions { linear: Format::F32, embeddings: Format::F32, overrides: BTreeMap::new() };
    let mut evaluations = 0;
    let mut score_of = |opts: &ImportOptions, eval: &mut dyn FnMut(&[Weight]) -> Result<f64, ImportError>| {
        evaluations += 1;
        let w = quantize_all(weights, opts)?;
        let bytes: usize = w.iter().map(Weight::packed_bytes).sum();
        Ok::<_, ImportError>((eval(&w)?, bytes))
    };
    let candidates: Vec<usize> = (0..weights.len()).filter(|&i| is_candidate(&weights[i].0, &weights[i].1)).collect();

    // 1. Sensitivity: one tensor at q4, the rest f32.
    let mut sensitivity = Vec::with_capacity(candidates.len());
    for &i in &candidates {
        let mut o = f32_all.clone();
        o.overrides.insert(weights[i].0.clone(), q4);
        let (s, _) = score_of(&o, eval)?;
        log(&format!("sensitivity {:<52} q4 alone: {s:.6}", weights[i].0));
        sensitivity.push((weights[i].0.clone(), s));
    }
    // 2. Order by damage per byte that promoting q4 -> q8 would add.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    let numel = |i: usize| weights[candidates[i]].1.iter().product::<usize>() as f64;
    order.sort_by(|&a, &b| {
        let da = (1.0 - sensitivity[a].1) / numel(a);
        let db = (1.0 - sensitivity[b].1) / numel(b);
        db.total_cmp(&da)
    });
    let with = |k: usize, high: Format, rest: Format| -> ImportOptions {
        let mut o = f32_all.clone();
        for (j, &i) in order.iter().enumerate() {
            o.overrides.insert(weights[candidates[i]].0.clone(), if j < k { high } else { rest });
        }
        o
    };
    // 3. The fewest promotions that meet the budget: q4 -> q8 first, then q8 -> f16.
    for (high, rest) in [(Format::Q8, q4), (Format::F16, Format::Q8)] {
        let full = score_of(&with(order.len(), high, rest), eval)?;
        log(&format!("all candidates at {high}: {:.6}", full.0));
        if full.0 < budget {
            continue;
        }
        // binary search on the number promoted; the score is close to monotone in it
        let (mut lo, mut hi) = (0usize, order.len());
        let mut best = full;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (s, b) = score_of(&with(mid, high, rest), eval)?;
            log(&format!("{mid:>3} most sensitive at {high}, rest {rest}: {s:.6} ({:.2} MB)", b as f64 / 1e6));
            if s >= budget {
                hi = mid;
                best = (s, b);
            } else {
                lo = mid + 1;
            }
        }
        let options = with(hi, high, rest);
        return Ok(AutoChoice { options, score: best.0, bytes: best.1, sensitivity, evaluations });
    }
    Err(ImportError::Unsupported(format!(
        "no mix of q4, q8 and f16 reaches the quality budget {budget} on the calibration texts; convert with --quant f32"
    )))
}
