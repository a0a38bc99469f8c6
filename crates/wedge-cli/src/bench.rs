//! `wedge bench`: embeddings per second and latency percentiles for sentence-embedding
//! packages on the GPU adapter and the CPU backend, in the workloads of the onnxruntime
//! baselines (`benches/minilm-onnxruntime.json`) so the figures compare directly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What to measure, from the command line.
#[derive(Debug)]
pub(crate) struct BenchArgs {
    pub(crate) models: Vec<(String, Vec<u8>)>,
    pub(crate) devices: Vec<String>,
    pub(crate) texts: PathBuf,
    pub(crate) workloads: Vec<String>,
    pub(crate) min_seconds: f64,
    pub(crate) min_calls: usize,
    pub(crate) max_call_seconds: f64,
    pub(crate) baseline: Option<PathBuf>,
    pub(crate) json: bool,
}

/// One measured (model, device, workload).
#[derive(Debug, Serialize)]
struct Record {
    model: String,
    device: String,
    workload: String,
    batch: usize,
    tokens_per_row: usize,
    calls: usize,
    emb_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    vs: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
struct Ratio {
    engine: String,
    emb_per_s: f64,
    ratio: f64,
}

#[derive(Debug, Deserialize)]
struct Baseline {
    engine: String,
    workload: String,
    emb_per_s: f64,
}

#[derive(Debug, Deserialize)]
struct BaselineFile {
    source: String,
    figures: Vec<Baseline>,
}

/// A workload: named as in the onnxruntime baselines.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    /// `[batch, 128]`: public sentences padded with [PAD] (mask 0) to 128 tokens. The matmuls
    /// compute every position; attention skips the padding queries, as it does in any batch.
    Fixed128(usize),
    /// The public sentences one at a time, unpadded; one call per sentence.
    PublicSingles,
    /// All public sentences in one batch padded to the longest.
    PublicBatch,
}

impl Workload {
    fn parse(s: &str) -> Result<Workload> {
        Ok(match s {
            "public32_b1" => Workload::PublicSingles,
            "public32_b32" => Workload::PublicBatch,
            _ => match s.strip_prefix("fixed128_b").and_then(|b| b.parse::<usize>().ok()) {
                Some(b) if (1..=1024).contains(&b) => Workload::Fixed128(b),
                _ => anyhow::bail!(
                    "unknown workload `{s}` (use fixed128_b<N> with N in 1..=1024, public32_b1 or public32_b32)"
                ),
            },
        })
    }

    fn name(self) -> String {
        match self {
            Workload::Fixed128(b) => format!("fixed128_b{b}"),
            Workload::PublicSingles => "public32_b1".into(),
            Workload::PublicBatch => "public32_b32".into(),
        }
    }
}

/// The `text` fields of a JSONL file.
fn read_texts(path: &Path) -> Result<Vec<String>> {
    let data = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut texts = Vec::new();
    for (i, line) in data.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
        let t = v.get("text").and_then(serde_json::Value::as_str).ok_or_else(|| {
            anyhow::anyhow!("{}:{}: expected an object with a string field \"text\"", path.display(), i + 1)
        })?;
        texts.push(t.to_string());
    }
    if texts.is_empty() {
        anyhow::bail!("{} holds no texts", path.display());
    }
    Ok(texts)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs `call` (which reports how many embeddings it made) twice to warm up, then until both
/// `min_calls` and `min_seconds` are reached. A warm-up call slower than `max_call` skips the
/// workload rather than spending minutes on a software adapter.
fn measure(
    args: &BenchArgs,
    mut call: impl FnMut(usize) -> Result<usize>,
) -> Result<std::result::Result<(Vec<f64>, usize), String>> {
    for i in 0..2 {
        let t = Instant::now();
        call(i)?;
        let secs = t.elapsed().as_secs_f64();
        if secs > args.max_call_seconds {
            return Ok(Err(format!("one call took {secs:.1} s (limit --max-call-seconds {})", args.max_call_seconds)));
        }
    }
    let (start, mut times, mut per_call) = (Instant::now(), Vec::new(), 0);
    let min = Duration::from_secs_f64(args.min_seconds);
    while times.len() < args.min_calls || start.elapsed() < min {
        let t = Instant::now();
        per_call = call(times.len())?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(Ok((times, per_call)))
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if !(args.min_seconds.is_finite() && (0.0..=3600.0).contains(&args.min_seconds)) {
        anyhow::bail!("--min-seconds must be between 0 and 3600");
    }
    if !(args.max_call_seconds.is_finite() && args.max_call_seconds > 0.0) {
        anyhow::bail!("--max-call-seconds must be a positive number");
    }
    let workloads = args.workloads.iter().map(|w| Workload::parse(w)).collect::<Result<Vec<_>>>()?;
    let texts = read_texts(&args.texts)?;
    let baseline: Option<BaselineFile> = match &args.baseline {
        Some(p) => Some(
            serde_json::from_slice(&std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?)
                .with_context(|| format!("{}: not a baseline file", p.display()))?,
        ),
        None => None,
    };
    let mut records = Vec::new();
    for dev_name in &args.devices {
        let device = match dev_name.as_str() {
            "cpu" => wedge::Device::cpu(),
            "gpu" => match wedge::Device::gpu() {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("bench: skipping the GPU: {e}");
                    continue;
                }
            },
            other => anyhow::bail!("unknown device `{other}` (use cpu or gpu)"),
        };
        let device_label = match device.adapter() {
            Some(a) => format!("gpu ({})", a.name),
            None => format!("cpu ({} threads)", wedge::cpu_threads()),
        };
        for (model_name, bytes) in &args.models {
            let e = wedge::Embedder::from_bytes(bytes, &device).with_context(|| format!("loading {model_name}"))?;
            let tokens = texts.iter().map(|t| e.tokenize(t)).collect::<wedge::Result<Vec<_>>>()?;
            // a fixed128 batch over the time limit rules out the larger ones and the public batch
            let mut too_slow: Option<(usize, String)> = None;
            for &w in &workloads {
                eprintln!("bench: {model_name} on {device_label}: {}", w.name());
                let (batch, row_tokens) = match w {
                    Workload::Fixed128(b) => (b, 128),
                    Workload::PublicSingles => (1, 0),
                    Workload::PublicBatch => (tokens.len(), tokens.iter().map(|t| t.ids.len()).max().unwrap_or(0)),
                };
                let fixed: Vec<wedge::Tokens> = match w {
                    Workload::Fixed128(b) => (0..b)
                        .map(|i| {
                            let mut t = tokens[i % tokens.len()].clone();
                            if t.ids.len() > 128 {
                                // cut to 128 but keep the closing special token last, as the peers do
                                let last = t.ids[t.ids.len() - 1];
                                t.ids.truncate(128);
                                t.type_ids.truncate(128);
                                t.ids[127] = last;
                            }
                            t
                        })
                        .collect(),
                    _ => tokens.clone(),
                };
                let ruled_out = match (&too_slow, w) {
                    (Some((b, why)), Workload::Fixed128(n)) if n >= *b => Some(why.clone()),
                    (Some((b, why)), Workload::PublicBatch) if *b <= 32 => Some(why.clone()),
                    _ => None,
                };
                let result = if let Some(why) = ruled_out {
                    Ok(Err(why))
                } else {
                    measure(args, |i| {
                        let n = match w {
                            Workload::Fixed128(_) => e.embed_padded(&fixed, 128)?.len(),
                            Workload::PublicSingles => {
                                e.embed_tokens(std::slice::from_ref(&tokens[i % tokens.len()]))?.len()
                            }
                            Workload::PublicBatch => e.embed_tokens(&fixed)?.len(),
                        };
                        Ok(n)
                    })
                }?;
                if let (Err(why), Workload::Fixed128(b)) = (&result, w)
                    && too_slow.is_none()
                {
                    too_slow = Some((b, format!("fixed128_b{b} already over the limit ({why})")));
                }
                let mut rec = Record {
                    model: model_name.clone(),
                    device: device_label.clone(),
                    workload: w.name(),
                    batch,
                    tokens_per_row: row_tokens,
                    calls: 0,
                    emb_per_s: 0.0,
                    p50_ms: 0.0,
                    p95_ms: 0.0,
                    skipped: None,
                    vs: Vec::new(),
                };
                match result {
                    Ok((times, per_call)) => {
                        let p50 = percentile(&times, 0.5);
                        rec.calls = times.len();
                        rec.emb_per_s = per_call as f64 / p50;
                        rec.p50_ms = p50 * 1e3;
                        rec.p95_ms = percentile(&times, 0.95) * 1e3;
                        if let Some(b) = &baseline {
                            rec.vs = b
                                .figures
                                .iter()
                                .filter(|f| f.workload == rec.workload && f.emb_per_s > 0.0)
                                .map(|f| Ratio {
                                    engine: f.engine.clone(),
                                    emb_per_s: f.emb_per_s,
                                    ratio: rec.emb_per_s / f.emb_per_s,
                                })
                                .collect();
                        }
                    }
                    Err(why) => rec.skipped = Some(why),
                }
                records.push(rec);
            }
        }
    }
    // written through a handle, so a closed pipe is an error (quietly ended by main), not a panic
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&records)?)?;
        out.flush()?;
        return Ok(());
    }
    let engines: Vec<String> = baseline
        .as_ref()
        .map(|b| {
            let mut v: Vec<String> = Vec::new();
            for f in &b.figures {
                if !v.contains(&f.engine) {
                    v.push(f.engine.clone());
                }
            }
            v
        })
        .unwrap_or_default();
    write!(out, "| model | device | workload | emb/s | p50 ms | p95 ms | calls |")?;
    for eng in &engines {
        write!(out, " × {eng} |")?;
    }
    writeln!(out)?;
    writeln!(out, "|---|---|---|---|---|---|---|{}", "---|".repeat(engines.len()))?;
    for r in &records {
        if let Some(why) = &r.skipped {
            writeln!(
                out,
                "| {} | {} | {} | skipped: {why} | | | |{}",
                r.model,
                r.device,
                r.workload,
                " |".repeat(engines.len())
            )?;
            continue;
        }
        write!(
            out,
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {} |",
            r.model, r.device, r.workload, r.emb_per_s, r.p50_ms, r.p95_ms, r.calls
        )?;
        for eng in &engines {
            match r.vs.iter().find(|v| &v.engine == eng) {
                Some(v) => write!(out, " {:.2} |", v.ratio)?,
                None => write!(out, " |")?,
            }
        }
        writeln!(out)?;
    }
    if let Some(b) = &baseline {
        writeln!(out, "\nratios: wedge emb/s over the peer's emb/s in the same workload ({})", b.source)?;
    }
    out.flush()?;
    Ok(())
}
