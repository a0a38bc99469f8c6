//! Continuous batching for a language model: one scheduler thread per model owns a
//! [`DecodeState`] of `max_sequences` sequences and runs one batched step after another. A
//! request joins the running batch at the next step (its prompt in chunks of what
//! `max_batch_tokens` leaves after the decoding sequences, so running streams keep flowing),
//! leaves it as soon as it finishes, and its rows go to the next request, which reuses the
//! longest prompt prefix any free rows hold. A request whose receiver is gone (the client
//! disconnected, the request timed out) is dropped before the next step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;
use wedge::{Continuation, DecodeState, FinishReason, GenerateParams, LanguageModel, SeqId, TokenEvent};

use crate::ServeError;
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

impl Scheduler {
    /// Allocates the model's cache (`max_sequences` × `ctx` positions) and starts its thread.
    pub fn start(
        label: &ModelLabel,
        lm: Arc<LanguageModel>,
        limits: SchedulerLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Scheduler, ServeError> {
        let model = label.model.as_str();
        let state = lm
            .new_state(limits.max_sequences, limits.ctx)
            .map_err(|e| ServeError::Config(format!("model `{model}`: key/value cache: {e}")))?;
        let shared = Arc::new(Shared {
            queue: WorkQueue::new(),
            label: label.clone(),
            limits,
            metrics,
            running: AtomicUsize::new(0),
            request_secs: AtomicU64::new(1f64.to_bits()),
        });
        let s = shared.clone();
        let worker =
            WorkerThread::spawn("llm", model, move || Worker { s: &s, lm: &lm, state, running: Vec::new() }.run())
                .map_err(|e| ServeError::Config(format!("cannot start the scheduler thread of `{model}`: {e}")))?;
        Ok(Scheduler { shared, worker })
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
    /// Prompt tokens in the cache so far.
    prefilled: usize,
    cached: usize,
    admitted: Instant,
    last_token: Option<Instant>,
}

impl Running {
    fn prefilling(&self) -> bool {
        self.prefilled < self.next.prompt().len()
    }
}

struct Worker<'a> {
    s: &'a Shared,
    lm: &'a LanguageModel,
    state: DecodeState,
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
                let free = self.state.capacity() - self.state.active();
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

    fn admit(&mut self, r: Request) {
        let Some((seq, cached)) = self.state.add_reusing(&r.prompt) else {
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
                    prefilled: cached,
                    cached,
                    admitted: Instant::now(),
                    last_token: None,
                });
            }
            Err(e) => {
                self.state.remove(seq);
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
                self.state.remove(r.seq);
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
            let take = budget.max(1).min(r.next.prompt().len() - r.prefilled);
            work.push((i, r.next.prompt()[r.prefilled..r.prefilled + take].to_vec()));
            budget = budget.saturating_sub(take);
        }
        let batch: Vec<(SeqId, &[u32])> = work.iter().map(|(i, t)| (self.running[*i].seq, t.as_slice())).collect();
        let label = self.s.label();
        let tokens: usize = work.iter().map(|(_, t)| t.len()).sum();
        self.s.metrics.llm_step_tokens.get_or_create(&label).observe(tokens as f64);
        self.s.metrics.llm_step_sequences.get_or_create(&label).observe(work.len() as f64);
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.lm.step(&mut self.state, &batch)));
        self.s.metrics.batch_seconds.get_or_create(&label).observe(t0.elapsed().as_secs_f64());
        let logits = match result {
            Ok(Ok(l)) if l.len() == work.len() => l,
            other => {
                let msg = match other {
                    Ok(Ok(l)) => format!("a step gave {} rows of logits for {} sequences", l.len(), work.len()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "the model panicked".to_string(),
                };
                tracing::error!(model = %self.s.label.model, version = %self.s.label.version, "step failed: {msg}");
                self.fail(work.iter().map(|(i, _)| *i).collect(), &msg);
                return;
            }
        };
        let mut ended = Vec::new();
        for ((i, fed), l) in work.iter().zip(logits) {
            let r = &mut self.running[*i];
            if r.prefilling() {
                r.prefilled += fed.len();
                if r.prefilling() {
                    continue;
                }
            }
            let room = self.state.len(r.seq).is_some_and(|n| n < self.state.ctx());
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
            self.state.remove(r.seq);
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
        let positions: usize = self.running.iter().filter_map(|r| self.state.len(r.seq)).sum();
        m.llm_kv_bytes_used.get_or_create(&label).set(self.lm.kv_bytes(positions) as i64);
    }
}
