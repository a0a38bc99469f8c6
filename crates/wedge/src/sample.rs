//! Choosing the next token from a row of logits: greedy, or temperature sampling with top-k,
//! top-p and min-p, after logit bias and repetition, presence and frequency penalties.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen. The default is greedy with no penalties.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 (or less) is greedy: the highest logit, the lowest id on a tie.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to at least `p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// Divide a positive logit (multiply a negative one) of every token seen before by this
    /// (1: off), as llama.cpp and Hugging Face do.
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token generated before (OpenAI's definition).
    pub presence_penalty: f32,
    /// Subtracted from the logit of every generated token once per time it was generated.
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens first (−100 or less bans a token).
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the random choice: the same seed gives the same tokens on the same backend.
    /// `None` takes one from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Checks every value, naming the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |name: &str, v: f32| if v.is_finite() { Ok(()) } else { Err(format!("{name} must be finite")) };
        finite("temperature", self.temperature)?;
        finite("presence_penalty", self.presence_penalty)?;
        finite("frequency_penalty", self.frequency_penalty)?;
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            return Err(format!("top_p must be in (0, 1], is {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], is {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!("repetition_penalty must be positive, is {}", self.repetition_penalty));
        }
        if let Some((id, b)) = self.logit_bias.iter().find(|(_, b)| b.is_nan()) {
            return Err(format!("logit_bias for token {id} is {b}"));
        }
        Ok(())
    }
}

/// A sampled token and its log-probability under the model (the softmax of the raw logits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    /// Token id.
    pub id: u32,
    /// `log p(id)` before any penalty, bias or truncation.
    pub logprob: f32,
}

/// Chooses tokens by [`SamplingParams`], with its own random stream.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Scratch: (logit, id) of the candidates.
    cands: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler (the params are assumed valid: [`SamplingParams::validate`]).
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(clock_seed);
        Sampler { params, rng: StdRng::seed_from_u64(seed), cands: Vec::new() }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits` (one per vocabulary entry). `prompt` and
    /// `generated` are the tokens so far: the repetition penalty counts both, the presence
    /// and frequency penalties the generated ones.
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], generated: &[u32]) -> Sampled {
        let p = &self.params;
        let mut l = logits.to_vec();
        for &(id, b) in &p.logit_bias {
            if let Some(x) = l.get_mut(id as usize) {
                *x += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            let mut seen: Vec<u32> = prompt.iter().chain(generated).copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(x) = l.get_mut(id as usize) {
                    *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts: Vec<u32> = generated.to_vec();
            counts.sort_unstable();
            for run in counts.chunk_by(|a, b| a == b) {
                if let Some(x) = l.get_mut(run[0] as usize) {
                    *x -= p.presence_penalty + p.frequency_penalty * run.len() as f32;
                }
            }
        }
        let id = if p.temperature <= 0.0 { argmax(&l) } else { self.draw(&l) };
        Sampled { id, logprob: log_softmax_at(logits, id as usize) }
    }

    fn draw(&mut self, l: &[f32]) -> u32 {
        let p = &self.params;
        let cands = &mut self.cands;
        cands.clear();
        cands.extend(l.iter().enumerate().filter(|(_, x)| **x > f32::NEG_INFINITY).map(|(i, &x)| (x, i as u32)));
        if cands.is_empty() {
            return argmax(l);
        }
        if (p.top_k == 0 || p.top_k >= cands.len()) && p.top_p >= 1.0 && p.min_p <= 0.0 {
            // Nothing is cut: draw from the whole softmax in id order, with no sort.
            let max = cands.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.0));
            let weight = |x: f32| f64::from((x - max) / p.temperature).exp();
            let total: f64 = cands.iter().map(|c| weight(c.0)).sum();
            let mut r = self.rng.random::<f64>() * total;
            for c in cands.iter() {
                let q = weight(c.0);
                if r < q {
                    return c.1;
                }
                r -= q;
            }
            return cands[cands.len() - 1].1;
        }
        // most likely first, the lower id first on ties, so a seed means one outcome
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, order);
            cands.truncate(p.top_k);
        }
        cands.sort_unstable_by(order);
        let max = cands[0].0;
        let mut probs: Vec<f64> = cands.iter().map(|(x, _)| f64::from((x - max) / p.temperature).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut sum = 0.0;
            for (i, q) in probs.iter().enumerate() {
                sum += q;
                if sum >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * f64::from(p.min_p);
            keep = keep.min(probs.iter().take_while(|q| **q >= floor).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (q, c) in probs[..keep].iter().zip(cands.iter()) {
            if r < *q {
                return c.1;
            }
            r -= q;
        }
        cands[keep - 1].1
    }
}

/// The index of the largest value (the first on a tie; NaNs lose).
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] || l[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// `log softmax(l)[i]`, summed in f64.
pub fn log_softmax_at(l: &[f32], i: usize) -> f32 {
    let max = l.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let sum: f64 = l.iter().map(|&x| f64::from(x - max).exp()).sum();
    (f64::from(l.get(i).copied().unwrap_or(f32::NEG_INFINITY) - max) - sum.ln()) as f32
}

/// The `n` highest log-probabilities of `softmax(l)` with their ids, most likely first (the
/// lower id first on a tie).
pub fn top_logprobs(l: &[f32], n: usize) -> Vec<(u32, f32)> {
    let n = n.min(l.len());
    if n == 0 {
        return Vec::new();
    }
    let max = l.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let log_sum = l.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln();
    let mut ids: Vec<u32> = (0..l.len() as u32).collect();
    let order = |a: &u32, b: &u32| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b));
    if n < ids.len() {
        ids.select_nth_unstable_by(n - 1, order);
        ids.truncate(n);
    }
    ids.sort_unstable_by(order);
    ids.into_iter().map(|i| (i, (f64::from(l[i as usize] - max) - log_sum) as f32)).collect()
}

fn clock_seed() -> u64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x5eed)
    }
    #[cfg(target_arch = "wasm32")]
    {
        // no clock here: a counter keeps two unseeded samplers apart
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0x5eed);
        NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_penalties_bias_and_seeds() {
        let l = [1.0, 3.0, 3.0, -2.0];
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&l, &[], &[]).id, 1, "ties go to the lower id");
        let p = SamplingParams { logit_bias: vec![(3, 10.0)], ..Default::default() };
        assert_eq!(Sampler::new(p).sample(&l, &[], &[]).id, 3);
        let p = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
        assert_eq!(Sampler::new(p).sample(&l, &[1], &[]).id, 2);
        let p = SamplingParams { frequency_penalty: 0.6, ..Default::default() };
        assert_eq!(Sampler::new(p.clone()).sample(&l, &[], &[1, 2, 2]).id, 1);
        let p = SamplingParams { presence_penalty: 2.5, ..Default::default() };
        assert_eq!(Sampler::new(p).sample(&l, &[], &[1, 2]).id, 0);
        // the same seed, the same draws; top_k = 1 is greedy
        let p = SamplingParams { temperature: 1.0, seed: Some(7), ..Default::default() };
        let draws = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&l, &[], &[]).id).collect::<Vec<_>>()
        };
        assert_eq!(draws(&p), draws(&p));
        assert!(draws(&p).contains(&0), "temperature 1 reaches the third most likely token");
        assert!(draws(&SamplingParams { top_k: 1, ..p.clone() }).iter().all(|&t| t == 1));
        assert!(draws(&SamplingParams { top_p: 0.5, ..p.clone() }).iter().all(|&t| t == 1 || t == 2));
        assert!(draws(&SamplingParams { min_p: 0.5, ..p }).iter().all(|&t| t == 1 || t == 2));
        let top = top_logprobs(&l, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0]);
        assert!(top.iter().all(|&(id, lp)| (lp - log_softmax_at(&l, id as usize)).abs() < 1e-6));
        assert_eq!(top_logprobs(&l, 9).len(), 4);
        let lp = log_softmax_at(&l, 1);
        assert!((lp - (3.0 - (1f64.exp() + 2.0 * 3f64.exp() + (-2f64).exp()).ln() as f32)).abs() < 1e-6);
    }
}
