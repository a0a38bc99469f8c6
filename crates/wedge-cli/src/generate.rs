//! `wedge generate` and `wedge chat`: text from a GGUF language model, streamed as it is
//! sampled.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use wedge::{ChatMessage, GenerateParams, KvType, LanguageModel, LmOptions, SamplingParams};

/// Options shared by `generate` and `chat`: the model, the device and the sampling.
#[derive(Args, Debug, Clone)]
pub(crate) struct ModelArgs {
    /// A GGUF file (architecture llama or qwen2), a .wedge package from `wedge convert`, or a
    /// Hugging Face folder of LlamaForCausalLM / Qwen2ForCausalLM.
    #[arg(long)]
    model: PathBuf,
    /// auto (a hardware GPU, else the CPU), gpu (any adapter, software included) or cpu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the most likely tokens up to this total probability.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty on tokens already seen (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Subtracted from the logits of tokens generated before.
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Subtracted per earlier occurrence from the logits of generated tokens.
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Seed of the sampler (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Positions of the key/value cache (default: the model's context, capped by --kv-budget-mb).
    #[arg(long)]
    ctx: Option<usize>,
    /// Memory the key/value cache may take when --ctx is not given, in MiB.
    #[arg(long, default_value_t = 1024)]
    kv_budget_mb: u64,
    /// Storage of the key/value cache: f32 (exact) or f16.
    #[arg(long, default_value = "f32")]
    kv: String,
    /// Prompt tokens per prefill step.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// On the CPU, round activations to 16 bits for the integer kernels (faster, less exact).
    #[arg(long)]
    fast: bool,
}

/// `wedge generate`.
#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Plain text to continue.
    #[arg(long, conflicts_with = "chat")]
    prompt: Option<String>,
    /// A user message, rendered with the model's chat template; `-` reads OpenAI-style
    /// messages ([{"role", "content"}, ...]) as JSON from stdin.
    #[arg(long)]
    chat: Option<String>,
    /// One JSON line per token ({"id", "text", "logprob"}), then one with counts and timings.
    #[arg(long)]
    json: bool,
}

/// `wedge chat`.
#[derive(Args, Debug)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message to start the conversation with.
    #[arg(long)]
    system: Option<String>,
}

impl ModelArgs {
    fn load(&self) -> Result<LanguageModel> {
        let kv = KvType::parse(&self.kv).with_context(|| format!("unknown --kv `{}` (use f32 or f16)", self.kv))?;
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        let device = crate::open_device(&self.device)?;
        eprintln!("wedge: generating on {}", crate::device_line(&device));
        let lm = open_lm(&self.model, &device, LmOptions { kv, fast_cpu: self.fast })
            .with_context(|| format!("loading {}", self.model.display()))?;
        Ok(lm)
    }

    /// `--ctx`, or else `want` positions within the model's context and `--kv-budget-mb`.
    fn ctx(&self, lm: &LanguageModel, want: usize) -> usize {
        self.ctx.unwrap_or_else(|| {
            let per_pos = lm.kv_bytes(1).max(1);
            let budget = (self.kv_budget_mb << 20) / per_pos;
            let model_ctx = match lm.config().context_length {
                0 => usize::MAX,
                c => c,
            };
            want.min(model_ctx).min(budget as usize)
        })
    }

    /// Says how large the key/value cache for `ctx` positions is.
    fn report_cache(&self, lm: &LanguageModel, ctx: usize) {
        eprintln!(
            "wedge: {} layers, context {ctx} positions, key/value cache {:.1} MiB ({})",
            lm.config().num_layers,
            lm.kv_bytes(ctx) as f64 / (1 << 20) as f64,
            self.kv
        );
    }

    /// What to generate after a prompt of `prompt_len` tokens in a context of `ctx` positions.
    fn params(&self, prompt_len: usize, ctx: usize) -> Result<GenerateParams> {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: Vec::new(),
            seed: self.seed,
        };
        sampling.validate().map_err(|m| anyhow::anyhow!("{m}"))?;
        if prompt_len >= ctx {
            bail!("the prompt has {prompt_len} tokens and the context holds {ctx} (raise --ctx or --kv-budget-mb)");
        }
        Ok(GenerateParams {
            max_tokens: self.max_tokens,
            sampling,
            stop: self.stop.clone(),
            stop_at_eos: !self.ignore_eos,
            prefill_chunk: self.batch,
            ctx,
            top_logprobs: 0,
        })
    }
}

/// Reads OpenAI-style messages from JSON.
fn messages_from_json(text: &str) -> Result<Vec<ChatMessage>> {
    let v: serde_json::Value = serde_json::from_str(text).context("--chat -: stdin is not JSON")?;
    let list = v.get("messages").unwrap_or(&v);
    let list = list.as_array().context("--chat -: expected an array of {\"role\", \"content\"} messages")?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |f: &str| {
                m.get(f).and_then(serde_json::Value::as_str).with_context(|| format!("message {i}: no string `{f}`"))
            };
            Ok(ChatMessage::new(field("role")?, field("content")?))
        })
        .collect()
}

/// `wedge generate`.
pub(crate) fn generate(args: GenerateArgs) -> Result<()> {
    let lm = args.model.load()?;
    let vocab = lm.vocab();
    let prompt = match (&args.prompt, &args.chat) {
        (Some(p), None) => vocab.encode(p, false)?,
        (None, Some(c)) => {
            let messages = if c == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading stdin")?;
                messages_from_json(&text)?
            } else {
                vec![ChatMessage::new("user", c)]
            };
            vocab.encode(&vocab.render_chat(&messages, true)?, true)?
        }
        _ => bail!("give --prompt TEXT or --chat TEXT (or --chat - for JSON messages on stdin)"),
    };
    let ctx = args.model.ctx(&lm, prompt.len().saturating_add(args.model.max_tokens));
    let params = args.model.params(prompt.len(), ctx)?;
    args.model.report_cache(&lm, ctx);
    let mut out = std::io::stdout().lock();
    let mut run = lm.generate(&prompt, params)?;
    for t in run.by_ref() {
        let t = t?;
        if args.json {
            let line = serde_json::json!({ "id": t.id, "text": t.text, "logprob": t.logprob });
            writeln!(out, "{line}")?;
        } else {
            out.write_all(t.text.as_bytes())?;
        }
        out.flush()?;
    }
    let s = run.stats();
    let finish = run.finish_reason().map_or("stop", |f| f.as_str());
    if args.json {
        let line = serde_json::json!({
            "finish_reason": finish,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "prompt_tok_s": s.prompt_tok_s(),
            "decode_tok_s": s.decode_tok_s(),
            "ttft_ms": s.ttft_secs * 1e3,
        });
        writeln!(out, "{line}")?;
    } else {
        writeln!(out)?;
        eprintln!(
            "wedge: {} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, first token after {:.0} ms ({finish})",
            s.prompt_tokens,
            s.prompt_tok_s(),
            s.completion_tokens,
            s.decode_tok_s(),
            s.ttft_secs * 1e3
        );
    }
    Ok(())
}

/// `wedge chat`: a conversation on the terminal, each answer streamed.
pub(crate) fn chat(args: ChatArgs) -> Result<()> {
    let lm = args.model.load()?;
    let vocab = lm.vocab();
    let mut messages: Vec<ChatMessage> = args.system.iter().map(|s| ChatMessage::new("system", s)).collect();
    // one cache for the whole conversation: each turn prefills only what the last one did not
    let ctx = args.model.ctx(&lm, usize::MAX);
    args.model.report_cache(&lm, ctx);
    let mut state = lm.new_state(1, ctx)?;
    let seq = state.add().context("a sequence in the cache")?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    eprintln!("wedge: type a message and press enter; an empty line or end of input ends the chat");
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        messages.push(ChatMessage::new("user", line.trim_end()));
        let prompt = vocab.encode(&vocab.render_chat(&messages, true)?, true)?;
        let params = args.model.params(prompt.len(), ctx)?;
        let mut answer = String::new();
        let mut run = lm.generate_in(&mut state, seq, &prompt, params)?;
        for t in run.by_ref() {
            let t = t?;
            answer.push_str(&t.text);
            out.write_all(t.text.as_bytes())?;
            out.flush()?;
        }
        let s = run.stats();
        writeln!(out)?;
        eprintln!(
            "wedge: {} prompt tokens ({} from the cache), {} generated at {:.1} tok/s",
            s.prompt_tokens,
            s.cached_tokens,
            s.completion_tokens,
            s.decode_tok_s()
        );
        messages.push(ChatMessage::new("assistant", &answer));
    }
    Ok(())
}

/// A language model from a GGUF file, a `.wedge` package, or a Hugging Face llama/qwen2 folder
/// (imported in memory, its tensors kept).
pub(crate) fn open_lm(path: &std::path::Path, device: &wedge::Device, options: LmOptions) -> Result<LanguageModel> {
    if path.is_dir() {
        let pkg = wedge_import::import_hf_decoder(path, wedge_import::DecoderQuant::Keep)?;
        return Ok(LanguageModel::from_package(pkg, device, options)?);
    }
    Ok(LanguageModel::open(path, device, options)?)
}
