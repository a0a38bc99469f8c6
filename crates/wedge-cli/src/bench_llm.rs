//! `wedge bench --llm MODEL.gguf`: a language model's prompt processing and decode speed in
//! the workloads of `benches/llm-side-by-side.sh` (a benchmark, not a test): a 128-token
//! prompt, 64 greedy tokens of one sequence, and aggregate decode with 4 and 16 sequences
//! stepped together.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use wedge::{LanguageModel, LmOptions, SeqId};

/// One device's figures.
#[derive(Debug, Serialize)]
struct Record {
    device: String,
    prompt_tokens: usize,
    prompt_tok_s: f64,
    ttft_ms: f64,
    decode_tokens: usize,
    decode_tok_s: f64,
    /// (sequences, aggregate tokens/s)
    aggregate: Vec<(usize, f64)>,
    peak_rss_mb: f64,
}

/// Prompt text: cycled until it has the tokens asked for.
const TEXT: &str = "The old lighthouse keeper climbed the winding stairs every evening, counting the steps as \
                    his father had taught him, and at the top he lit the great lamp that guided the fishing boats \
                    home through fog and storm. ";

fn prompt(lm: &LanguageModel, n: usize) -> Result<Vec<u32>> {
    let ids = lm.vocab().encode(TEXT, false)?;
    Ok(ids.iter().copied().cycle().take(n).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak resident memory of this process (Linux; 0 elsewhere).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn measure(lm: &LanguageModel, device: &str, repeats: usize) -> Result<Record> {
    let (pp, tg) = (128, 64);
    let p = prompt(lm, pp)?;
    let mut pp_s = Vec::new();
    let mut ttft = Vec::new();
    let mut tg_s = Vec::new();
    for _ in 0..repeats.max(1) {
        let mut state = lm.new_state(1, pp + tg + 1)?;
        let seq = state.add().context("a sequence")?;
        let t = Instant::now();
        let mut logits = lm.step(&mut state, &[(seq, &p)])?.pop().context("logits")?;
        let mut next = wedge::argmax(&logits);
        let prefill = t.elapsed().as_secs_f64();
        pp_s.push(pp as f64 / prefill);
        ttft.push(prefill * 1e3);
        let t = Instant::now();
        for _ in 0..tg {
            logits = lm.step(&mut state, &[(seq, &[next])])?.pop().context("logits")?;
            next = wedge::argmax(&logits);
        }
        tg_s.push(tg as f64 / t.elapsed().as_secs_f64());
    }
    let mut aggregate = Vec::new();
    for n in [4usize, 16] {
        let steps = 32;
        let mut state = lm.new_state(n, 16 + steps + 1)?;
        let seqs: Vec<SeqId> = (0..n).filter_map(|_| state.add()).collect();
        // each sequence its own short prompt (a different offset into the text)
        let mut next = Vec::with_capacity(n);
        for (i, &s) in seqs.iter().enumerate() {
            let ids: Vec<u32> = p[i % 64..i % 64 + 16].to_vec();
            let l = lm.step(&mut state, &[(s, &ids)])?.pop().context("logits")?;
            next.push(wedge::argmax(&l));
        }
        let t = Instant::now();
        for _ in 0..steps {
            let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let work: Vec<(SeqId, &[u32])> = seqs.iter().zip(&tokens).map(|(s, t)| (*s, &t[..])).collect();
            let out = lm.step(&mut state, &work)?;
            next = out.iter().map(|l| wedge::argmax(l)).collect();
        }
        aggregate.push((n, (n * steps) as f64 / t.elapsed().as_secs_f64()));
    }
    Ok(Record {
        device: device.to_string(),
        prompt_tokens: pp,
        prompt_tok_s: median(pp_s),
        ttft_ms: median(ttft),
        decode_tokens: tg,
        decode_tok_s: median(tg_s),
        aggregate,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Measures `path` on each device and prints a table (or JSON lines).
pub(crate) fn bench_llm(path: &Path, devices: &[String], fast: bool, repeats: usize, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:<28} {:>10} {:>9} {:>10} {:>12} {:>13} {:>9}",
            "device", "pp128 t/s", "ttft ms", "tg64 t/s", "4 seqs t/s", "16 seqs t/s", "RSS MB"
        )?;
    }
    for device in devices {
        let d = crate::open_device(device)?;
        let lm = crate::generate::open_lm(path, &d, LmOptions { fast_cpu: fast, ..Default::default() })
            .with_context(|| format!("loading {}", path.display()))?;
        let name = match d.adapter() {
            Some(a) => a.to_string(),
            None => format!("cpu ({} threads{})", wedge::cpu_threads(), if fast { ", --fast" } else { "" }),
        };
        let r = measure(&lm, &name, repeats)?;
        if json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        } else {
            let agg = |n: usize| r.aggregate.iter().find(|a| a.0 == n).map_or(0.0, |a| a.1);
            let short: String = r.device.chars().take(28).collect();
            writeln!(
                out,
                "{short:<28} {:>10.1} {:>9.1} {:>10.1} {:>12.1} {:>13.1} {:>9.0}",
                r.prompt_tok_s,
                r.ttft_ms,
                r.decode_tok_s,
                agg(4),
                agg(16),
                r.peak_rss_mb
            )?;
        }
        out.flush()?;
    }
    Ok(())
}
