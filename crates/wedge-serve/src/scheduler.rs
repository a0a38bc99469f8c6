//! Continuous batching for a language model: one scheduler thread per model owns a
//! [`DecodeState`] of `max_sequences` sequences and runs one batched step after another. A
//! request joins the running batch at the next step (its prompt in chunks of what
//! `max_batch_tokens` leaves after the decoding sequences, so running streams keep flowing),
//! leaves it as soon as it finishes, and its rows go to the next request, which reuses the
//! longest prompt prefix any free rows hold. A request whose receiver is gone (the client
//! disconnected, the request timed out) is dropped before the next step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;
use wedge::{Continuation, DecodeState, FinishReason, GenerateParams, LanguageModel, SeqId, TokenEvent};

use crate::ServeError;
use crate::breaker::{CpuCopy, DeviceKind, GpuGuard};
use crate::metrics::{Metrics, ModelLabel};
use crate::worker::{WorkQueue, WorkerThread};

/// Token counts of a finished request, as OpenAI's `usage` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, the ones whose keys and values were reused rather than computed.
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

/// What a generation request receives, in order: tokens, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum GenEvent {
    /// A generated token and the text it releases.
    Token(TokenEvent),
    /// The end: why, and the counts.
    Done {
        /// `stop` or `length`.
        finish: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// The request failed; nothing follows.
    Failed(ServeError),
}

/// The receiving end of a request: dropping it cancels the request within one step.
pub type GenReceiver = mpsc::UnboundedReceiver<GenEvent>;

struct Request {
    prompt: Vec<u32>,
    params: GenerateParams,
    events: mpsc::UnboundedSender<GenEvent>,
}

/// Sizes of a scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Sequences decoded together.
    pub max_sequences: usize,
    /// Positions each sequence can hold (prompt and generated tokens).
    pub ctx: usize,
    /// Tokens in one step (decoding sequences first, then prompt chunks).
    pub max_batch_tokens: usize,
    /// Requests waiting for a free sequence; past it requests get 503.
    pub max_waiting: usize,
}

struct Shared {
    queue: WorkQueue<Request>,
    label: ModelLabel,
    limits: SchedulerLimits,
    metrics: Arc<Metrics>,
    running: AtomicUsize,
    /// Mean seconds a request held a sequence (f64 bits), for `Retry-After`.
    request_secs: AtomicU64,
    /// Steps run on the GPU now (else on the CPU).
    on_gpu: AtomicBool,
}

impl Shared {
    fn label(&self) -> ModelLabel {
        self.label.clone()
    }
}

/// The scheduler of one language model.
pub struct Scheduler {
    shared: Arc<Shared>,
    worker: WorkerThread,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("model", &self.shared.label).field("limits", &self.shared.limits).finish()
    }
}

/// How a language model on a GPU moves to the CPU: its breaker, and a CPU copy of its file.
pub(crate) struct Fallback {
    pub(crate) guard: GpuGuard,
    pub(crate) cpu: CpuCopy<LanguageModel>,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback").field("guard", &self.guard).finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Allocates the model's cache (`max_sequences` × `ctx` positions) and starts its thread.
    pub fn start(
        label: &ModelLabel,
        lm: Arc<LanguageModel>,
        limits: SchedulerLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Scheduler, ServeError> {
        Scheduler::start_with(label, lm, limits, metrics, None)
    }

    /// [`Scheduler::start`] for a model on a GPU with a breaker: its steps run on the GPU
    /// thread under the watchdog and move to the CPU copy while the breaker is open.
    pub(crate) fn start_with(
        label: &ModelLabel,
        lm: Arc<LanguageModel>,
        limits: SchedulerLimits,
        metrics: Arc<Metrics>,
        fallback: Option<Fallback>,
    ) -> Result<Scheduler, ServeError> {
        let model = label.model.as_str();
        let state = lm
            .new_state(limits.max_sequences, limits.ctx)
            .map_err(|e| ServeError::Config(format!("model `{model}`: key/value cache: {e}")))?;
        let device = if lm.on_cpu() { DeviceKind::Cpu } else { DeviceKind::Gpu };
        let shared = Arc::new(Shared {
            queue: WorkQueue::new(),
            label: label.clone(),
            limits,
            metrics,
            running: AtomicUsize::new(0),
            request_secs: AtomicU64::new(1f64.to_bits()),
            on_gpu: AtomicBool::new(device == DeviceKind::Gpu),
        });
        let s = shared.clone();
        let engine = Engine { lm: lm.clone(), state, device };
        let worker = WorkerThread::spawn("llm", model, move || {
            Worker { s: &s, lm: &lm, fallback, engine: Some(engine), running: Vec::new() }.run()
        })
        .map_err(|e| ServeError::Config(format!("cannot start the scheduler thread of `{model}`: {e}")))?;
        Ok(Scheduler { shared, worker })
    }

    /// Where steps run now (the CPU while a GPU model's breaker is open).
    pub fn device(&self) -> DeviceKind {
        if self.shared.on_gpu.load(Ordering::Relaxed) { DeviceKind::Gpu } else { DeviceKind::Cpu }
    }

    /// The sizes it runs with.
    pub fn limits(&self) -> SchedulerLimits {
        self.shared.limits
    }

    /// Queues a request: `prompt` (checked to fit the context) continued by `params`. Refused
    /// with 503 when `max_waiting` requests already wait.
    pub fn submit(&self, prompt: Vec<u32>, params: GenerateParams) -> Result<GenReceiver, ServeError> {
        self.check_prompt(prompt.len())?;
        params.sampling.validate().map_err(ServeError::BadInput)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut q = self.shared.queue.lock();
        if q.closed {
            return Err(ServeError::ShuttingDown);
        }
        let queued = q.items.len();
        if queued >= self.shared.limits.max_waiting {
            drop(q);
            self.shared.metrics.shed.get_or_create(&self.shared.label()).inc();
            let per = f64::from_bits(self.shared.request_secs.load(Ordering::Relaxed));
            let waves = (queued + 1) as f64 / self.shared.limits.max_sequences as f64;
            let retry_after_s = ((waves * per).ceil() as u64).clamp(1, 60);
            return Err(ServeError::Overloaded { model: self.shared.label.model.clone(), queued, retry_after_s });
        }
        q.items.push_back(Request { prompt, params, events: tx });
        self.shared.metrics.llm_waiting.get_or_create(&self.shared.label()).set(q.items.len() as i64);
        drop(q);
        self.shared.queue.notify();
        Ok(rx)
    }

    /// Checks that a prompt of `len` tokens leaves room in a sequence (400 with both numbers).
    pub fn check_prompt(&self, len: usize) -> Result<(), ServeError> {
        let ctx = self.shared.limits.ctx;
        if len == 0 {
            return Err(ServeError::BadInput("the prompt has no tokens".into()));
        }
        if len >= ctx {
            return Err(ServeError::BadInput(format!(
                "the prompt has {len} tokens; model `{}` holds {ctx} positions per sequence (prompt and completion)",
                self.shared.label.model
            )));
        }
        Ok(())
    }

    /// Requests waiting for a sequence.
    pub fn waiting(&self) -> usize {
        self.shared.queue.lock().items.len()
    }

    /// Sequences running now.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::Relaxed)
    }

    /// Refuses new requests, finishes the queued and running ones, and waits for the thread.
    pub fn shutdown(&self) {
        self.shared.queue.close();
        self.worker.join();
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A request that holds a sequence.
struct Running {
    seq: SeqId,
    next: Continuation,
    events: mpsc::UnboundedSender<GenEvent>,
    /// What the sequence's cache must hold before it decodes: the prompt, or after a move to
    /// another device the prompt and the tokens generated before the last one.
    target: Vec<u32>,
    /// Tokens of `target` in the cache so far.
    prefilled: usize,
    cached: usize,
    admitted: Instant,
    last_token: Option<Instant>,
}

impl Running {
    fn prefilling(&self) -> bool {
        self.prefilled < self.target.len()
    }

    /// Starts over in an empty sequence `seq` (of another device's cache): what the old one
    /// held is fed again, and decoding goes on from the token sampled last.
    fn refill(&mut self, seq: SeqId) {
        let mut target = self.next.prompt().to_vec();
        if let Some((_, fed)) = self.next.tokens().split_last() {
            target.extend_from_slice(fed);
        }
        self.seq = seq;
        self.target = target;
        self.prefilled = 0;
    }
}

/// The model and key/value cache that steps run on.
struct Engine {
    lm: Arc<LanguageModel>,
    state: DecodeState,
    device: DeviceKind,
}

/// How a step went.
enum Stepped {
    /// Logits for every entry of the step.
    Logits(Vec<Vec<f32>>),
    /// The step failed (its requests fail with this).
    Failed(String),
    /// The GPU faulted: the step runs again on the CPU.
    Moved,
}

struct Worker<'a> {
    s: &'a Shared,
    /// The model as loaded: its vocabulary and sizes, and the GPU model of a fallback.
    lm: &'a Arc<LanguageModel>,
    fallback: Option<Fallback>,
    /// `None` after a GPU run that faulted, until the next engine is made.
    engine: Option<Engine>,
    running: Vec<Running>,
}

impl Worker<'_> {
    fn run(mut self) {
        loop {
            let admitted = {
                let mut q = self.s.queue.lock();
                while q.items.is_empty() && self.running.is_empty() && !q.closed {
                    q = self.s.queue.wait(q);
                }
                if q.items.is_empty() && self.running.is_empty() {
                    return; // closed and drained
                }
                let mut admitted = Vec::new();
                let free = self.s.limits.max_sequences.saturating_sub(self.running.len());
                while admitted.len() < free {
                    let Some(r) = q.items.pop_front() else { break };
                    if r.events.is_closed() {
                        self.cancelled();
                    } else {
                        admitted.push(r);
                    }
                }
                self.s.metrics.llm_waiting.get_or_create(&self.s.label()).set(q.items.len() as i64);
                admitted
            };
            if let Err(e) = self.ensure_engine() {
                tracing::error!(model = %self.s.label.model, "no device to run on: {e}");
                for r in admitted {
                    let _ = r.events.send(GenEvent::Failed(e.clone()));
                }
                self.fail((0..self.running.len()).collect(), &e.to_string());
                continue;
            }
            for r in admitted {
                self.admit(r);
            }
            self.drop_cancelled();
            self.gauges();
            if !self.running.is_empty() {
                self.step();
            }
            self.gauges();
        }
    }

    /// Makes sure steps have an engine on the device the breaker says (the model's own when
    /// there is no breaker). A new engine starts with an empty cache: every running request
    /// is fed again there.
    fn ensure_engine(&mut self) -> Result<(), ServeError> {
        let want = match &self.fallback {
            Some(fb) => {
                let lm = self.lm.clone();
                if fb.guard.use_gpu(move || probe(&lm)) { DeviceKind::Gpu } else { DeviceKind::Cpu }
            }
            None if self.lm.on_cpu() => DeviceKind::Cpu,
            None => DeviceKind::Gpu,
        };
        if self.engine.as_ref().is_some_and(|e| e.device == want) {
            return Ok(());
        }
        let lm = match (&self.fallback, want) {
            (Some(fb), DeviceKind::Cpu) => fb.cpu.get()?,
            _ => self.lm.clone(),
        };
        self.engine = None; // (frees the old cache first)
        let limits = self.s.limits;
        let mut state = lm
            .new_state(limits.max_sequences, limits.ctx)
            .map_err(|e| ServeError::Inference(format!("key/value cache on the {}: {e}", want.as_str())))?;
        for r in &mut self.running {
            let seq = state.add().ok_or_else(|| ServeError::Inference("no free sequence".into()))?;
            r.refill(seq);
        }
        tracing::warn!(
            model = %self.s.label.model, version = %self.s.label.version, running = self.running.len(),
            "steps move to the {}", want.as_str()
        );
        self.s.on_gpu.store(want == DeviceKind::Gpu, Ordering::Relaxed);
        self.engine = Some(Engine { lm, state, device: want });
        Ok(())
    }

    fn admit(&mut self, r: Request) {
        let Some(engine) = self.engine.as_mut() else { return };
        let Some((seq, cached)) = engine.state.add_reusing(&r.prompt) else {
            let _ = r.events.send(GenEvent::Failed(ServeError::Inference("no free sequence".into())));
            return;
        };
        let label = self.s.label();
        match Continuation::new(self.lm.vocab(), &r.prompt, r.params) {
            Ok(next) => {
                let m = &self.s.metrics;
                m.llm_prompt_tokens.get_or_create(&label).inc_by(r.prompt.len() as u64);
                if cached > 0 {
                    m.llm_prefix_hits.get_or_create(&label).inc();
                    m.llm_cached_tokens.get_or_create(&label).inc_by(cached as u64);
                }
                self.running.push(Running {
                    seq,
                    next,
                    events: r.events,
                    target: r.prompt,
                    prefilled: cached,
                    cached,
                    admitted: Instant::now(),
                    last_token: None,
                });
            }
            Err(e) => {
                engine.state.remove(seq);
                let _ = r.events.send(GenEvent::Failed(ServeError::BadInput(e.to_string())));
            }
        }
    }

    fn cancelled(&self) {
        self.s.metrics.llm_cancelled.get_or_create(&self.s.label()).inc();
    }

    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].events.is_closed() {
                let r = self.running.swap_remove(i);
                if let Some(e) = &mut self.engine {
                    e.state.remove(r.seq);
                }
                self.cancelled();
            } else {
                i += 1;
            }
        }
    }

    /// One batched step: a token for every decoding sequence, then prompt chunks in the
    /// tokens left (oldest request first); then sampling where a prompt is complete.
    fn step(&mut self) {
        let mut budget = self.s.limits.max_batch_tokens.max(1);
        let mut work: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, r) in self.running.iter().enumerate() {
            if let (false, Some(id)) = (r.prefilling(), r.next.next_input()) {
                work.push((i, vec![id]));
                budget = budget.saturating_sub(1);
            }
        }
        let mut order: Vec<usize> = (0..self.running.len()).filter(|&i| self.running[i].prefilling()).collect();
        order.sort_by_key(|&i| self.running[i].admitted);
        for i in order {
            // (at least one prompt token per step, so a prompt always advances)
            if budget == 0 && !work.is_empty() {
                break;
            }
            let r = &self.running[i];
            let take = budget.max(1).min(r.target.len() - r.prefilled);
            work.push((i, r.target[r.prefilled..r.prefilled + take].to_vec()));
            budget = budget.saturating_sub(take);
        }
        let batch: Vec<(SeqId, Vec<u32>)> = work.iter().map(|(i, t)| (self.running[*i].seq, t.clone())).collect();
        let label = self.s.label();
        let tokens: usize = work.iter().map(|(_, t)| t.len()).sum();
        self.s.metrics.llm_step_tokens.get_or_create(&label).observe(tokens as f64);
        self.s.metrics.llm_step_sequences.get_or_create(&label).observe(work.len() as f64);
        let t0 = Instant::now();
        let result = self.run_step(batch);
        self.s.metrics.batch_seconds.get_or_create(&label).observe(t0.elapsed().as_secs_f64());
        let failed = match result {
            Stepped::Logits(l) if l.len() == work.len() => Ok(l),
            Stepped::Logits(l) => Err(format!("a step gave {} rows of logits for {} sequences", l.len(), work.len())),
            Stepped::Failed(e) => Err(e),
            Stepped::Moved => return,
        };
        let logits = match failed {
            Ok(l) => l,
            Err(msg) => {
                tracing::error!(model = %self.s.label.model, version = %self.s.label.version, "step failed: {msg}");
                self.fail(work.iter().map(|(i, _)| *i).collect(), &msg);
                return;
            }
        };
        let Some(engine) = &self.engine else { return };
        let mut ended = Vec::new();
        for ((i, fed), l) in work.iter().zip(logits) {
            let r = &mut self.running[*i];
            if r.prefilling() {
                r.prefilled += fed.len();
                // a request fed again after a move already holds its next token
                if r.prefilling() || !r.next.tokens().is_empty() {
                    continue;
                }
            }
            let room = engine.state.len(r.seq).is_some_and(|n| n < engine.state.ctx());
            match r.next.accept(self.lm.vocab(), &l, room) {
                Ok(event) => {
                    let now = Instant::now();
                    let m = &self.s.metrics;
                    match r.last_token {
                        None => m.llm_ttft.get_or_create(&label).observe((now - r.admitted).as_secs_f64()),
                        Some(t) => m.llm_inter_token.get_or_create(&label).observe((now - t).as_secs_f64()),
                    }
                    r.last_token = Some(now);
                    if let Some(e) = event {
                        m.llm_generated_tokens.get_or_create(&label).inc();
                        if r.events.send(GenEvent::Token(e)).is_err() {
                            // the receiver left: retired below
                            r.next.end(FinishReason::Stop);
                            m.llm_cancelled.get_or_create(&label).inc();
                        }
                    }
                    if let Some(finish) = r.next.finish_reason() {
                        let usage = Usage {
                            prompt_tokens: r.next.prompt().len(),
                            cached_tokens: r.cached,
                            completion_tokens: r.next.tokens().len(),
                        };
                        let _ = r.events.send(GenEvent::Done { finish, usage });
                        ended.push(*i);
                    }
                }
                Err(e) => {
                    let _ = r.events.send(GenEvent::Failed(ServeError::Inference(e.to_string())));
                    ended.push(*i);
                }
            }
        }
        self.retire(ended);
    }

    /// Runs a step on the engine: inline, or with a breaker on the GPU thread under the
    /// watchdog, where a fault gives the engine up (the next one is made on the CPU).
    fn run_step(&mut self, batch: Vec<(SeqId, Vec<u32>)>) -> Stepped {
        let Some(mut engine) = self.engine.take() else {
            return Stepped::Failed("no device to run on".into());
        };
        let inline = |engine: &mut Engine| {
            let work: Vec<(SeqId, &[u32])> = batch.iter().map(|(s, t)| (*s, t.as_slice())).collect();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.lm.step(&mut engine.state, &work))) {
                Ok(Ok(l)) => Stepped::Logits(l),
                Ok(Err(e)) => Stepped::Failed(e.to_string()),
                Err(_) => Stepped::Failed("the model panicked".into()),
            }
        };
        let guard = match &self.fallback {
            Some(fb) if engine.device == DeviceKind::Gpu => &fb.guard,
            other => {
                if let Some(fb) = other {
                    fb.guard.ran_on_cpu();
                }
                let stepped = inline(&mut engine);
                self.engine = Some(engine);
                return stepped;
            }
        };
        let ran = guard.run(move || {
            let work: Vec<(SeqId, &[u32])> = batch.iter().map(|(s, t)| (*s, t.as_slice())).collect();
            match engine.lm.step(&mut engine.state, &work) {
                Ok(l) => Ok((engine, l)),
                Err(e) => Err(e.to_string()),
            }
        });
        match ran {
            Ok((engine, l)) => {
                self.engine = Some(engine);
                Stepped::Logits(l)
            }
            // the breaker is open: the engine (and the cache it held) is given up, and the
            // step runs again on the CPU with every request fed there anew
            Err(_) => Stepped::Moved,
        }
    }

    fn fail(&mut self, which: Vec<usize>, msg: &str) {
        for &i in &which {
            let _ = self.running[i].events.send(GenEvent::Failed(ServeError::Inference(msg.to_string())));
        }
        self.retire(which);
    }

    /// Removes the requests at these indices and frees their sequences.
    fn retire(&mut self, mut which: Vec<usize>) {
        which.sort_unstable();
        for i in which.into_iter().rev() {
            let r = self.running.swap_remove(i);
            if let Some(e) = &mut self.engine {
                e.state.remove(r.seq);
            }
            let secs = r.admitted.elapsed().as_secs_f64();
            let mean = f64::from_bits(self.s.request_secs.load(Ordering::Relaxed));
            self.s.request_secs.store((0.8 * mean + 0.2 * secs).to_bits(), Ordering::Relaxed);
        }
    }

    fn gauges(&self) {
        let label = self.s.label();
        let m = &self.s.metrics;
        self.s.running.store(self.running.len(), Ordering::Relaxed);
        m.llm_running.get_or_create(&label).set(self.running.len() as i64);
        let Some(engine) = &self.engine else { return };
        let positions: usize = self.running.iter().filter_map(|r| engine.state.len(r.seq)).sum();
        m.llm_kv_bytes_used.get_or_create(&label).set(self.lm.kv_bytes(positions) as i64);
    }
}

/// A probe of a GPU model: one token through a small cache of its own.
fn probe(lm: &LanguageModel) -> Result<(), String> {
    let mut state = lm.new_state(1, 16).map_err(|e| e.to_string())?;
    let seq = state.add().ok_or("no sequence")?;
    lm.step(&mut state, &[(seq, &[0][..])]).map(drop).map_err(|e| e.to_string())
}
