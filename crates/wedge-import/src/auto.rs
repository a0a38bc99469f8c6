//! Mixed precision by measured sensitivity (`--quant auto`).
//!
//! Each candidate tensor (the encoder's linears and its embedding tables) is
//! quantized alone to each 4-bit format, symmetric `q4` and asymmetric `q4_1`, and the
//! damage measured on calibration texts; its 4-bit format is the one that hurts less
//! (embedding tables, whose rows are not centred on zero, tend to pick `q4_1`).
//! Tensors are then ordered by damage per byte that a higher precision would cost,
//! and the smallest prefix of that order promoted to q8 (then f16, if q8 everywhere is
//! not enough) that meets the quality budget is kept. The measurement itself is the
//! caller's: it gets the candidate weights and returns the mean and the minimum cosine
//! similarity of the model's outputs to the f32 model's on the calibration texts; the
//! budget bounds both (a mean alone lets a few texts degrade badly).

use std::collections::BTreeMap;

use wedge_core::quant::{Format, Weight};

use crate::{F32Tensor, ImportError, ImportOptions, format_for, is_linear};

/// Calibration texts shipped with the converter (not the test texts).
pub const CALIBRATION_TEXTS: &str = include_str!("../data/calibration.txt");

/// The calibration texts, one per line.
pub fn calibration_texts() -> Vec<&'static str> {
    CALIBRATION_TEXTS.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// Cosine similarity of two vectors, in f64 (the measure of the quality budget).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(f64::MIN_POSITIVE)
}

/// The (mean, minimum) cosine of each output to its reference.
pub fn scores(outputs: &[Vec<f32>], reference: &[Vec<f32>]) -> Scores {
    let cos: Vec<f64> = outputs.iter().zip(reference).map(|(a, b)| cosine(a, b)).collect();
    (cos.iter().sum::<f64>() / cos.len().max(1) as f64, cos.iter().copied().fold(f64::INFINITY, f64::min))
}

/// What `auto` chose and why.
#[derive(Clone, Debug)]
pub struct AutoChoice {
    /// The options to import with.
    pub options: ImportOptions,
    /// Mean cosine to the f32 model on the calibration texts.
    pub score: f64,
    /// Minimum cosine to the f32 model over the calibration texts.
    pub min_score: f64,
    /// Packed bytes of all weights.
    pub bytes: usize,
    /// Per candidate tensor: the mean cosine with only it at its 4-bit format.
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

/// Calibration scores of one candidate model: (mean, minimum) cosine to the f32 model.
pub type Scores = (f64, f64);

/// The quality a mixed-precision choice must keep on the calibration texts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Mean cosine to the f32 model.
    pub mean: f64,
    /// Minimum cosine to the f32 model over the texts.
    pub min: f64,
}

/// Picks a format per tensor: the smallest model whose calibration scores meet `budget`.
/// `eval` returns the (mean, minimum) cosine to the f32 model for a full set of weights.
pub fn auto_select(
    weights: &[F32Tensor],
    budget: Budget,
    group: u32,
    eval: &mut dyn FnMut(&[Weight]) -> Result<Scores, ImportError>,
    log: &mut dyn FnMut(&str),
) -> Result<AutoChoice, ImportError> {
    let q4 = Format::Q4 { group };
    q4.validate().map_err(ImportError::Unsupported)?;
    let f32_all = ImportOptions { linear: Format::F32, embeddings: Format::F32, overrides: BTreeMap::new() };
    let mut evaluations = 0;
    let mut score_of = |opts: &ImportOptions, eval: &mut dyn FnMut(&[Weight]) -> Result<Scores, ImportError>| {
        evaluations += 1;
        let w = quantize_all(weights, opts)?;
        let bytes: usize = w.iter().map(Weight::packed_bytes).sum();
        Ok::<_, ImportError>((eval(&w)?, bytes))
    };
    let candidates: Vec<usize> = (0..weights.len()).filter(|&i| is_candidate(&weights[i].0, &weights[i].1)).collect();

    // 1. Sensitivity: one tensor at 4 bits, the rest f32; keep the 4-bit format that hurts less.
    let q4_1 = Format::Q4_1 { group };
    let mut sensitivity = Vec::with_capacity(candidates.len());
    let mut low = Vec::with_capacity(candidates.len());
    for &i in &candidates {
        let mut best = (f64::NEG_INFINITY, q4);
        for f in [q4, q4_1] {
            let mut o = f32_all.clone();
            o.overrides.insert(weights[i].0.clone(), f);
            let ((s, _), _) = score_of(&o, eval)?;
            log(&format!("sensitivity {:<52} {f} alone: {s:.6}", weights[i].0));
            // q4 is smaller, so q4_1 must do strictly better
            if s > best.0 {
                best = (s, f);
            }
        }
        sensitivity.push((weights[i].0.clone(), best.0));
        low.push(best.1);
    }
    // 2. Order by damage per byte that promoting q4 -> q8 would add.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    let numel = |i: usize| weights[candidates[i]].1.iter().product::<usize>() as f64;
    order.sort_by(|&a, &b| {
        let da = (1.0 - sensitivity[a].1) / numel(a);
        let db = (1.0 - sensitivity[b].1) / numel(b);
        db.total_cmp(&da)
    });
    // `rest: None` keeps each tensor's own 4-bit format
    let with = |k: usize, high: Format, rest: Option<Format>| -> ImportOptions {
        let mut o = f32_all.clone();
        for (j, &i) in order.iter().enumerate() {
            o.overrides.insert(weights[candidates[i]].0.clone(), if j < k { high } else { rest.unwrap_or(low[i]) });
        }
        o
    };
    // 3. The fewest promotions that meet the budget: 4-bit -> q8 first, then q8 -> f16.
    for (high, rest) in [(Format::Q8, None), (Format::F16, Some(Format::Q8))] {
        let meets = |(mean, min): (f64, f64)| mean >= budget.mean && min >= budget.min;
        let full = score_of(&with(order.len(), high, rest), eval)?;
        log(&format!("all candidates at {high}: mean {:.6} min {:.6}", full.0.0, full.0.1));
        if !meets(full.0) {
            continue;
        }
        // binary search on the number promoted; the score is close to monotone in it
        let (mut lo, mut hi) = (0usize, order.len());
        let mut best = full;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (s, b) = score_of(&with(mid, high, rest), eval)?;
            let rest = rest.map_or("4-bit".to_string(), |f| f.to_string());
            log(&format!(
                "{mid:>3} most sensitive at {high}, rest {rest}: mean {:.6} min {:.6} ({:.2} MB)",
                s.0,
                s.1,
                b as f64 / 1e6
            ));
            if meets(s) {
                hi = mid;
                best = (s, b);
            } else {
                lo = mid + 1;
            }
        }
        let options = with(hi, high, rest);
        return Ok(AutoChoice {
            options,
            score: best.0.0,
            min_score: best.0.1,
            bytes: best.1,
            sensitivity,
            evaluations,
        });
    }
    Err(ImportError::Unsupported(format!(
        "no mix of q4, q8 and f16 reaches the quality budget (mean {}, min {}) on the calibration texts; convert with --quant f32",
        budget.mean, budget.min
    )))
}
