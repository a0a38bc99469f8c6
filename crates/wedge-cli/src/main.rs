//! The `wedge` command-line tool.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

mod bench;
mod bench_llm;
mod generate;
mod inspect;
mod serve;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use wedge_core::Format;
use wedge_import::ImportOptions;

#[derive(Parser, Debug)]
#[command(name = "wedge", version, about = "Portable INT8/INT4 inference on wgpu, WebGPU and the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Convert a Hugging Face model folder, or a GGUF language model, into a .wedge package.
    Convert {
        /// The model folder (config.json, model.safetensors, tokenizer.json), or a .gguf file.
        src: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Weight format of the linear layers: f32, f16, q8, q8a8 (q8 with 8-bit activations), q4, q4_1, or auto (per-tensor
        /// mixed precision chosen by measured sensitivity on calibration texts); default q8. For a
        /// language model (a GGUF file, or a llama/qwen2 folder): keep (every tensor as the source
        /// stores it, the default), or a format every matrix is requantized to (lossy): q8_0,
        /// q4, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q8, f16, bf16, f32.
        #[arg(long)]
        quant: Option<String>,
        /// Group size for q4 and q4_1 (32, 64 or 128).
        #[arg(long, default_value_t = 32)]
        group_size: u32,
        /// Format of the embedding tables (default: f32, or f16 with --quant f16; chosen per
        /// tensor with --quant auto).
        #[arg(long)]
        embeddings: Option<String>,
        /// For --quant auto: the mean cosine to the f32 model to keep on the calibration texts.
        #[arg(long, default_value_t = 0.997)]
        budget: f64,
        /// For --quant auto: the minimum cosine to the f32 model to keep on every calibration text.
        #[arg(long, default_value_t = 0.99)]
        budget_min: f64,
    },
    /// Embed JSONL texts from stdin ({"text": ...}); writes {"embedding": [...]} lines in input order.
    Embed {
        /// A .wedge package (default: the bundled model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// auto (a hardware GPU, else the CPU), gpu (any adapter, software included) or cpu.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Most texts per run: texts of like length run together, padded to the longest.
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// Show a model file's architecture, metadata and per-tensor formats, shapes and sizes.
    Inspect {
        /// A `.wedge` or `.gguf` file.
        model: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure embeddings/s and p50/p95 latency of sentence-embedding packages on the GPU and
    /// the CPU, in the onnxruntime baseline workloads (a benchmark, not a test).
    Bench {
        /// A .wedge package to measure (repeatable; default: the bundled model).
        #[arg(long)]
        model: Vec<PathBuf>,
        /// Also convert this Hugging Face folder in memory, once per --quant format.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Formats for --from, comma separated (f32, f16, q8, q8a8, q4, q4_1).
        #[arg(long, default_value = "f32,q8,q4", value_delimiter = ',')]
        quant: Vec<String>,
        /// Devices, comma separated: cpu, gpu (any adapter, software included).
        #[arg(long, default_value = "gpu,cpu", value_delimiter = ',')]
        device: Vec<String>,
        /// JSONL texts ({"text": ...}); default: the public test texts in the repository.
        #[arg(long)]
        texts: Option<PathBuf>,
        /// Workloads, comma separated: fixed128_b<N> ([N,128] padded), public32_b1, public32_b32.
        #[arg(
            long,
            default_value = "fixed128_b1,fixed128_b8,fixed128_b32,public32_b1,public32_b32",
            value_delimiter = ','
        )]
        workloads: Vec<String>,
        /// Measure each workload for at least this long (after two warm-up calls).
        #[arg(long, default_value_t = 2.0)]
        min_seconds: f64,
        /// And for at least this many calls.
        #[arg(long, default_value_t = 5)]
        min_calls: usize,
        /// Skip a workload whose warm-up call takes longer than this (software adapters).
        #[arg(long, default_value_t = 20.0)]
        max_call_seconds: f64,
        /// Peer figures to print ratios against (default: benches/minilm-onnxruntime.json in
        /// the repository, when present).
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Measure this GGUF language model instead: 128-token prompt, 64 decoded tokens,
        /// aggregate decode with 4 and 16 sequences, peak RSS.
        #[arg(long)]
        llm: Option<PathBuf>,
        /// With --llm: on the CPU, the integer kernels (16-bit activations).
        #[arg(long)]
        fast: bool,
        /// With --llm: runs of the single-sequence workloads (the median is printed).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Show the compute devices wedge can use and which one `--device auto` picks.
    Devices,
    /// Run the edge node: OpenAI and KServe v2 HTTP APIs, dynamic batching, a prediction cache.
    Serve(serve::ServeArgs),
    /// Generate text with a GGUF language model, streamed to stdout as it is sampled.
    Generate(generate::GenerateArgs),
    /// Chat with a GGUF language model on the terminal (its own chat template, streamed answers).
    Chat(generate::ChatArgs),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Convert { src, output, quant, group_size, embeddings, budget, budget_min } => {
            let budget = wedge_import::Budget { mean: budget, min: budget_min };
            if is_gguf(&src) || (src.is_dir() && wedge_import::is_hf_decoder(&src)) {
                convert_decoder(&src, &output, quant.as_deref().unwrap_or("keep"), group_size)
            } else {
                convert(&src, &output, quant.as_deref().unwrap_or("q8"), group_size, embeddings.as_deref(), budget)
            }
        }
        Command::Embed { model, device, batch } => embed(model.as_deref(), &device, batch),
        Command::Inspect { model, json } => inspect::inspect(&model, json),
        Command::Bench { device, json, llm: Some(llm), fast, repeats, .. } => {
            bench_llm::bench_llm(&llm, &device, fast, repeats, json)
        }
        Command::Bench {
            model,
            from,
            quant,
            device,
            texts,
            workloads,
            min_seconds,
            min_calls,
            max_call_seconds,
            baseline,
            json,
            ..
        } => bench_models(&model, from.as_deref(), &quant).and_then(|models| {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let default_baseline = repo.join("benches/minilm-onnxruntime.json");
            bench::run(&bench::BenchArgs {
                models,
                devices: device,
                texts: texts.unwrap_or_else(|| repo.join("tests/data/public.jsonl")),
                workloads,
                min_seconds,
                min_calls: min_calls.max(1),
                max_call_seconds,
                baseline: baseline.or_else(|| default_baseline.is_file().then_some(default_baseline)),
                json,
            })
        }),
        Command::Devices => devices(),
        Command::Serve(args) => serve::serve(args, default_model),
        Command::Generate(args) => generate::generate(args),
        Command::Chat(args) => generate::chat(args),
    };
    if let Err(e) = res {
        // a closed pipe (`wedge inspect m | head`) is not an error
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            return;
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Whether `path` is a file that starts as GGUF files do.
fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == b"GGUF"
}

/// `wedge convert model.gguf|folder -o model.wedge`: a decoder package, every tensor kept, or
/// the matrices requantized when `--quant` names a format.
fn convert_decoder(src: &Path, out: &Path, quant: &str, group: u32) -> Result<()> {
    let how = match quant {
        "keep" => wedge_import::DecoderQuant::Keep,
        "auto" => anyhow::bail!("--quant auto is for encoders; a language model takes keep or a format"),
        q => wedge_import::DecoderQuant::To(Format::parse(q, group).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown --quant `{q}` (use keep, q8_0, q4, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q8, f16, bf16 or f32)"
            )
        })?),
    };
    let pkg = if src.is_dir() {
        wedge_import::import_hf_decoder(src, how)
    } else {
        let bytes = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        let name = src.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        wedge_import::import_gguf(&bytes, &name, how)
    }
    .with_context(|| format!("converting {}", src.display()))?;
    let (written, _digest) = pkg.to_bytes(3)?;
    std::fs::write(out, &written).with_context(|| format!("cannot write {}", out.display()))?;
    let what = pkg.metadata.get("weights").map_or("", String::as_str);
    eprintln!(
        "wedge: wrote {} ({:.1} MB, {} tensors: {what})",
        out.display(),
        written.len() as f64 / 1e6,
        pkg.tensors.len()
    );
    Ok(())
}

fn convert(
    src: &Path,
    out: &Path,
    quant: &str,
    group: u32,
    embeddings: Option<&str>,
    budget: wedge_import::Budget,
) -> Result<()> {
    let enc = wedge_import::inspect_hf_folder(src)?;
    let weights = wedge_import::load_f32_weights(&enc)?;
    let opts = if quant == "auto" {
        auto_options(&enc, &weights, group, budget)?
    } else {
        let format = Format::parse(quant, group)
            .ok_or_else(|| anyhow::anyhow!("unknown --quant `{quant}` (use f32, f16, q8, q8a8, q4, q4_1 or auto)"))?;
        format.validate().map_err(|m| anyhow::anyhow!("--group-size: {m}"))?;
        let mut opts = ImportOptions::uniform(format);
        if let Some(e) = embeddings {
            opts.embeddings = Format::parse(e, group)
                .ok_or_else(|| anyhow::anyhow!("unknown --embeddings `{e}` (use f32, f16, q8, q4 or q4_1)"))?;
        }
        opts
    };
    let bar = ProgressBar::new(weights.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} quantizing [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let pkg = wedge_import::package(&enc, &weights, &opts, &mut |i, _, name| {
        bar.set_position(i as u64);
        bar.set_message(name.to_string());
    })?;
    bar.finish_and_clear();
    let (bytes, digest) = pkg.to_bytes(3)?;
    let tmp = out.with_extension("wedge.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    let what = pkg.metadata.get("mixed_precision").cloned().unwrap_or_else(|| format!("linears {}", opts.linear));
    eprintln!("wrote {} ({:.2} MB, {what}, digest {})", out.display(), bytes.len() as f64 / 1e6, &digest[..16]);
    Ok(())
}

/// Runs the `auto` search: the encoder on the CPU backend, scored on the calibration texts
/// by mean cosine similarity to the f32 model's embeddings.
fn auto_options(
    enc: &wedge_import::HfEncoder,
    weights: &[wedge_import::F32Tensor],
    group: u32,
    budget: wedge_import::Budget,
) -> Result<ImportOptions> {
    let mg = enc.config.build()?;
    let texts = wedge_import::calibration_texts();
    let cpu = wedge::Device::cpu();
    let embed = |ws: Vec<wedge_core::Weight>| -> Result<Vec<Vec<f32>>> {
        let model = wedge::Model::from_graph(mg.graph.clone(), ws)?;
        let e = wedge::Embedder::new(&model, &enc.tokenizer, enc.max_seq_length, &cpu)?;
        let tokens = texts.iter().map(|t| e.tokenize(t)).collect::<wedge::Result<Vec<_>>>()?;
        Ok(e.embed_batched(&tokens, 16)?)
    };
    let f32_weights = weights
        .iter()
        .map(|(n, s, v)| wedge_core::Weight::from_f32(n, s, v))
        .collect::<wedge_core::Result<Vec<_>>>()?;
    let reference = embed(f32_weights)?;
    let mut eval = |ws: &[wedge_core::Weight]| -> Result<(f64, f64), wedge_import::ImportError> {
        let got = embed(ws.to_vec()).map_err(|e| wedge_import::ImportError::Unsupported(format!("{e:#}")))?;
        Ok(wedge_import::scores(&got, &reference))
    };
    let bar = ProgressBar::new_spinner();
    let choice = wedge_import::auto_select(weights, budget, group, &mut eval, &mut |msg| {
        bar.set_message(msg.to_string());
        bar.tick();
    })?;
    bar.finish_and_clear();
    eprintln!(
        "auto: cosine to f32 on {} calibration texts mean {:.6} min {:.6} (budget mean {} min {}), {:.2} MB packed, {} evaluations",
        texts.len(),
        choice.score,
        choice.min_score,
        budget.mean,
        budget.min,
        choice.bytes as f64 / 1e6,
        choice.evaluations
    );
    Ok(choice.options)
}

/// The bundled default model: `WEDGE_MODEL`, else `models/` beside the executable's
/// install prefix, else the repository's `models/`.
fn default_model() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("WEDGE_MODEL") {
        return Ok(PathBuf::from(p));
    }
    let name = "all-MiniLM-L6-v2.wedge";
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join(name));
        candidates.push(dir.join("../share/wedge").join(name));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(name));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("no bundled model found ({name}); pass --model or set WEDGE_MODEL"))
}

fn open_device(kind: &str) -> Result<wedge::Device> {
    Ok(match kind {
        "cpu" => wedge::Device::cpu(),
        "gpu" => wedge::Device::gpu().context("--device gpu")?,
        "auto" => wedge::Device::auto(),
        other => anyhow::bail!("unknown --device `{other}` (use auto, gpu or cpu)"),
    })
}

/// Which device runs the model, and why the CPU when `auto` fell back to it: what a command
/// tells the user before it starts.
fn device_line(device: &wedge::Device) -> String {
    match device.fallback_reason() {
        Some(why) => format!("the CPU backend ({why})"),
        None if device.gpu_context().is_none() => "the CPU backend".to_string(),
        None => device.describe(),
    }
}

/// `wedge embed` reads this many batches of texts before it runs them, longest first.
const EMBED_WINDOW_BATCHES: usize = 8;

fn embed(model: Option<&Path>, device: &str, batch: usize) -> Result<()> {
    if batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let path = match model {
        Some(p) => p.to_path_buf(),
        None => default_model()?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let device = open_device(device)?;
    eprintln!("wedge: embedding on {}", device_line(&device));
    let embedder =
        wedge::Embedder::from_bytes(&bytes, &device).with_context(|| format!("loading {}", path.display()))?;
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut pending: Vec<wedge::Tokens> = Vec::new();
    let flush = |pending: &mut Vec<wedge::Tokens>, out: &mut dyn Write| -> Result<()> {
        for e in embedder.embed_batched(pending, batch)? {
            serde_json::to_writer(&mut *out, &serde_json::json!({ "embedding": e }))?;
            out.write_all(b"\n")?;
        }
        pending.clear();
        out.flush()?;
        Ok(())
    };
    for (i, line) in stdin.lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("line {}: not valid JSON", i + 1))?;
        let text = v
            .get("text")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| anyhow::anyhow!("line {}: expected an object with a string field \"text\"", i + 1))?;
        pending.push(embedder.tokenize(text)?);
        // a window of several batches, so that texts of like length can share a run
        if pending.len() >= batch.saturating_mul(EMBED_WINDOW_BATCHES) {
            flush(&mut pending, &mut out)?;
        }
    }
    flush(&mut pending, &mut out)
}

/// The packages `wedge bench` measures: the given files, the `--from` folder converted in
/// memory to each format, or the bundled model.
fn bench_models(paths: &[PathBuf], from: Option<&Path>, quants: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut models = Vec::new();
    for p in paths {
        let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        models.push((p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), bytes));
    }
    if let Some(dir) = from {
        let enc = wedge_import::inspect_hf_folder(dir)?;
        let weights = wedge_import::load_f32_weights(&enc)?;
        for q in quants {
            let format = Format::parse(q, 32)
                .ok_or_else(|| anyhow::anyhow!("unknown --quant `{q}` (use f32, f16, q8, q8a8, q4 or q4_1)"))?;
            let pkg = wedge_import::package(&enc, &weights, &ImportOptions::uniform(format), &mut |_, _, _| {})?;
            models.push((q.clone(), pkg.to_bytes(1)?.0));
        }
    }
    if models.is_empty() {
        let p = default_model()?;
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        models.push(("bundled".to_string(), bytes));
    }
    Ok(models)
}

fn devices() -> Result<()> {
    // written through a handle, so a closed pipe (`wedge devices | head -1`) is an error, not a panic
    let mut out = std::io::stdout().lock();
    match wedge::Device::gpu() {
        Ok(d) => {
            writeln!(out, "gpu   {}", d.adapter().map(|a| a.to_string()).unwrap_or_default())?;
            if let Some(a) = d.adapter() {
                let on = |yes: bool| if yes { "on" } else { "off" };
                let ctx = d.gpu_context();
                writeln!(
                    out,
                    "      shader-f16 {}, {} invocations per workgroup, subgroup GEMV {}, f16 GEMM {}",
                    if a.shader_f16 { "yes" } else { "no" },
                    a.max_invocations,
                    on(ctx.is_some_and(|c| c.subgroups())),
                    on(ctx.is_some_and(|c| c.f16()))
                )?;
            }
        }
        Err(e) => writeln!(out, "gpu   none ({e})")?,
    }
    writeln!(
        out,
        "cpu   {} threads, integer matmul kernels: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        wedge::cpu_integer_kernels()
    )?;
    let auto = wedge::Device::auto();
    match auto.fallback_reason() {
        Some(why) => writeln!(out, "auto  cpu ({why})")?,
        None => writeln!(out, "auto  {}", auto.describe())?,
    }
    out.flush()?;
    Ok(())
}
