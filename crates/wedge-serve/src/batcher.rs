//! Dynamic batching: inputs from concurrent requests wait in one bounded queue per model; a
//! worker thread takes up to `max_batch_size` of them, waiting at most `max_queue_delay` after
//! the oldest arrived, runs them as one batch and hands each result back to its waiter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wedge::Tokens;

use crate::ServeError;
use crate::breaker::DeviceKind;
use crate::config::BatchingConfig;
use crate::metrics::{Metrics, ModelLabel};
use crate::worker::{WorkQueue, WorkerThread};

/// One embedding.
pub type Vector = Arc<[f32]>;

/// Runs one batch: a vector per input, in order, and the device that ran it. A
/// [`ServeError::BadInput`] says an input is at fault: the batch's inputs are then run one by
/// one, so that only the faulty one fails.
pub type RunBatch = Box<dyn Fn(&[Tokens]) -> Result<(Vec<Vec<f32>>, DeviceKind), ServeError> + Send>;

/// An input's embedding and the device that computed it.
pub type Embedded = (Vector, DeviceKind);

struct Item {
    tokens: Tokens,
    reply: oneshot::Sender<Result<Embedded, ServeError>>,
    queued_at: Instant,
    /// The span of the request that queued it (a trace's batch run hangs under it).
    request: tracing::Span,
    /// Open while it waits (a DEBUG span: traced only when telemetry is on).
    queued: tracing::Span,
}

struct Shared {
    queue: WorkQueue<Item>,
    settings: BatchingConfig,
    label: ModelLabel,
    metrics: Arc<Metrics>,
    /// Seconds per input of recent runs (f64 bits; a moving average), for `Retry-After` and the
    /// wait budget.
    per_input_s: std::sync::atomic::AtomicU64,
    /// Inputs of the run in progress.
    running: std::sync::atomic::AtomicUsize,
    /// Runs so far (the first sets the time per input; later ones move it by a fifth).
    runs: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn label(&self) -> ModelLabel {
        self.label.clone()
    }

    fn per_input_s(&self) -> f64 {
        f64::from_bits(self.per_input_s.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Takes a run's time per input into the estimate: a moving average, so that one slow or
    /// fast run does not swing admission.
    fn learn_per_input(&self, secs: f64) {
        let first = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
        let mean = if first { secs } else { 0.8 * self.per_input_s() + 0.2 * secs };
        self.per_input_s.store(mean.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Most inputs of the next run: `max_batch_size`, and with a wait budget no more than run
    /// within it, so that an input admitted by the budget is not then held by a long run.
    fn batch_limit(&self) -> usize {
        let max = self.settings.max_batch_size.max(1);
        match self.settings.max_queue_wait_ms {
            0 => max,
            ms => ((ms as f64 / 1e3 / self.per_input_s()) as usize).clamp(1, max),
        }
    }
}

/// The batcher of one model.
pub struct Batcher {
    shared: Arc<Shared>,
    worker: Option<WorkerThread>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("model", &self.shared.label).field("settings", &self.shared.settings).finish()
    }
}

impl Batcher {
    /// Starts the worker thread of `model`.
    pub fn start(label: &ModelLabel, settings: BatchingConfig, metrics: Arc<Metrics>, run: RunBatch) -> Batcher {
        let model = label.model.as_str();
        let shared = Arc::new(Shared {
            queue: WorkQueue::new(),
            settings,
            label: label.clone(),
            metrics,
            per_input_s: std::sync::atomic::AtomicU64::new(0.01f64.to_bits()),
            running: std::sync::atomic::AtomicUsize::new(0),
            runs: std::sync::atomic::AtomicU64::new(0),
        });
        let s = shared.clone();
        let worker = WorkerThread::spawn("batch", model, move || work(&s, &run))
            .map_err(|e| tracing::error!("cannot start the batch thread: {e}"))
            .ok();
        Batcher { shared, worker }
    }

    /// Queues one input; the receiver gets its embedding. Refused when the queue is full.
    pub fn submit(&self, tokens: Tokens) -> Result<oneshot::Receiver<Result<Embedded, ServeError>>, ServeError> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.shared.queue.lock();
        if q.closed {
            return Err(ServeError::ShuttingDown);
        }
        let queued = q.items.len();
        if queued >= self.shared.settings.max_queue {
            drop(q);
            return Err(self.shed(queued));
        }
        let (request, queued) = (tracing::Span::current(), tracing::debug_span!("queue", queued = queued as i64));
        q.items.push_back(Item { tokens, reply: tx, queued_at: Instant::now(), request, queued });
        self.shared.metrics.queue_depth.get_or_create(&self.shared.label()).set(q.items.len() as i64);
        drop(q);
        self.shared.queue.notify();
        Ok(rx)
    }

    /// Whether a request may queue now: refused (503) when the inputs queued and the run in
    /// progress would keep it waiting longer than `max_queue_wait_ms`, judged by the recent time
    /// per input. A request asks once, before its first input, so that it is admitted or
    /// refused whole.
    pub fn admit(&self) -> Result<(), ServeError> {
        let max_ms = self.shared.settings.max_queue_wait_ms;
        if max_ms == 0 {
            return Ok(());
        }
        let queued = self.queued();
        let ahead = queued + self.shared.running.load(std::sync::atomic::Ordering::Relaxed);
        let wait_ms = ahead as f64 * self.shared.per_input_s() * 1e3;
        if wait_ms > max_ms as f64 { Err(self.shed(queued)) } else { Ok(()) }
    }

    /// Counts a shed request and says when to come back: once the queue has run.
    fn shed(&self, queued: usize) -> ServeError {
        self.shared.metrics.shed.get_or_create(&self.shared.label()).inc();
        let retry_after_s = ((queued as f64 * self.shared.per_input_s()).ceil() as u64).clamp(1, 60);
        ServeError::Overloaded { model: self.shared.label.model.clone(), queued, retry_after_s }
    }

    /// Most inputs that may wait (`max_queue`).
    pub fn max_queue(&self) -> usize {
        self.shared.settings.max_queue
    }

    /// Inputs waiting now.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().items.len()
    }

    /// Refuses new inputs, runs the queued ones, and waits for the worker to finish.
    pub fn shutdown(&self) {
        self.shared.queue.close();
        if let Some(w) = &self.worker {
            w.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn work(s: &Shared, run: &RunBatch) {
    let delay = Duration::from_micros(s.settings.max_queue_delay_us);
    loop {
        let mut q = s.queue.lock();
        while q.items.is_empty() && !q.closed {
            q = s.queue.wait(q);
        }
        let Some(first) = q.items.front() else {
            return; // closed and drained
        };
        // Wait for company until the oldest input has waited `delay`, the batch is full, or we close.
        let max = s.batch_limit();
        let deadline = first.queued_at + delay;
        while q.items.len() < max && !q.closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = s.queue.wait_timeout(q, deadline - now);
        }
        let n = q.items.len().min(max);
        let batch: Vec<Item> = q.items.drain(..n).collect();
        s.metrics.queue_depth.get_or_create(&s.label()).set(q.items.len() as i64);
        drop(q);
        // Inputs whose requests went away (timeout, disconnect) are not run.
        let mut batch: Vec<Item> = batch.into_iter().filter(|i| !i.reply.is_closed()).collect();
        if batch.is_empty() {
            continue;
        }
        let tokens: Vec<Tokens> = batch.iter().map(|i| i.tokens.clone()).collect();
        // Each input's trace: its wait ends, the run (shared with the batch) begins.
        let n = batch.len();
        let runs: Vec<tracing::Span> = batch
            .iter_mut()
            .map(|i| {
                i.queued = tracing::Span::none();
                tracing::debug_span!(parent: &i.request, "batch", size = n as i64, device = tracing::field::Empty)
            })
            .collect();
        let t0 = Instant::now();
        s.running.store(n, std::sync::atomic::Ordering::Relaxed);
        let result = run_caught(run, &tokens);
        s.running.store(0, std::sync::atomic::Ordering::Relaxed);
        if let Ok((_, device)) = &result {
            for span in &runs {
                span.record("device", device.as_str());
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let label = s.label();
        s.metrics.batch_size.get_or_create(&label).observe(batch.len() as f64);
        s.metrics.batch_seconds.get_or_create(&label).observe(secs);
        s.learn_per_input(secs / batch.len() as f64);
        match result {
            Ok((vectors, device)) => {
                s.metrics.inferences.get_or_create(&label).inc_by(batch.len() as u64);
                for (item, v) in batch.into_iter().zip(vectors) {
                    let _ = item.reply.send(Ok((v.into(), device))); // the waiter may have gone
                }
            }
            // one input at fault fails its own request, not its batch's neighbours'
            Err(ServeError::BadInput(_)) if batch.len() > 1 => {
                for (item, t) in batch.into_iter().zip(&tokens) {
                    let one = run_caught(run, std::slice::from_ref(t));
                    if one.is_ok() {
                        s.metrics.inferences.get_or_create(&label).inc();
                    }
                    let _ = item.reply.send(one.map(|(mut v, device)| (v.remove(0).into(), device)));
                }
            }
            Err(e) => {
                tracing::error!(model = %s.label.model, version = %s.label.version, "batch failed: {e}");
                for item in batch {
                    let _ = item.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Runs a batch; a panic, or a vector count other than the input count, is a failed run.
fn run_caught(run: &RunBatch, tokens: &[Tokens]) -> Result<(Vec<Vec<f32>>, DeviceKind), ServeError> {
    let (vectors, device) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(tokens)))
        .unwrap_or_else(|_| Err(ServeError::Inference("the model panicked".into())))?;
    if vectors.len() != tokens.len() {
        return Err(ServeError::Inference(format!(
            "the model returned {} vectors for {} inputs",
            vectors.len(),
            tokens.len()
        )));
    }
    Ok((vectors, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::Mutex;

    fn tokens(i: u32) -> Tokens {
        Tokens { ids: vec![i], type_ids: vec![0] }
    }

    /// A stand-in model that records its batch sizes and returns each input id as a vector.
    fn recording(sizes: Arc<Mutex<Vec<usize>>>, pause: Duration) -> RunBatch {
        Box::new(move |batch: &[Tokens]| {
            sizes.lock().unwrap().push(batch.len());
            std::thread::sleep(pause);
            Ok((batch.iter().map(|t| vec![t.ids[0] as f32]).collect(), DeviceKind::Cpu))
        })
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(&mut Registry::default()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inputs_share_runs_and_come_back_in_order() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let settings =
            BatchingConfig { max_batch_size: 8, max_queue_delay_us: 50_000, max_queue: 100, max_queue_wait_ms: 0 };
        let b =
            Batcher::start(&ModelLabel::new("m", "1"), settings, metrics(), recording(sizes.clone(), Duration::ZERO));
        let rxs: Vec<_> = (0..20).map(|i| b.submit(tokens(i)).unwrap()).collect();
        for (i, rx) in rxs.into_iter().enumerate() {
            assert_eq!(&*rx.await.unwrap().unwrap().0, &[i as f32]);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&s| s <= 8), "{sizes:?}");
        assert!(sizes.len() <= 4, "20 inputs queued at once should take 3 runs, got {sizes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_sheds_and_shutdown_drains() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let settings = BatchingConfig { max_batch_size: 1, max_queue_delay_us: 0, max_queue: 3, max_queue_wait_ms: 0 };
        let b = Batcher::start(
            &ModelLabel::new("m", "1"),
            settings,
            metrics(),
            recording(sizes.clone(), Duration::from_millis(100)),
        );
        let mut ok = Vec::new();
        let mut shed = 0;
        for i in 0..10 {
            match b.submit(tokens(i)) {
                Ok(rx) => ok.push(rx),
                Err(ServeError::Overloaded { retry_after_s, .. }) => {
                    assert!(retry_after_s >= 1);
                    shed += 1
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(shed >= 6, "only {shed} shed");
        b.shutdown();
        assert!(matches!(b.submit(tokens(0)), Err(ServeError::ShuttingDown)));
        for rx in ok {
            rx.await.unwrap().unwrap(); // accepted inputs are all answered
        }
    }

    /// With a wait budget, a request that would wait behind more than it is refused at once,
    /// while the queue still has room; once the queue has run, requests are admitted again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_longer_than_the_wait_budget_sheds_at_once() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let settings =
            BatchingConfig { max_batch_size: 1, max_queue_delay_us: 0, max_queue: 100, max_queue_wait_ms: 200 };
        let run = recording(sizes.clone(), Duration::from_millis(50));
        let b = Batcher::start(&ModelLabel::new("m", "1"), settings, metrics(), run);
        // one run teaches the batcher its time per input (~50 ms)
        b.submit(tokens(0)).unwrap().await.unwrap().unwrap();
        let mut waiting = Vec::new();
        let mut refused = 0;
        for i in 0..20 {
            match b.admit() {
                Ok(()) => waiting.push(b.submit(tokens(i)).unwrap()),
                Err(ServeError::Overloaded { retry_after_s, queued, .. }) => {
                    assert!(retry_after_s >= 1 && queued >= 3, "refused behind {queued} queued inputs and one running");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!((4..=6).contains(&waiting.len()), "{} admitted behind a 200 ms budget of 50 ms runs", waiting.len());
        assert_eq!(refused, 20 - waiting.len());
        for rx in waiting {
            rx.await.unwrap().unwrap();
        }
        assert!(b.admit().is_ok(), "an empty queue admits");
    }

    #[tokio::test]
    async fn model_errors_reach_every_waiter() {
        let run: RunBatch = Box::new(|_| Err(ServeError::Inference("boom".into())));
        let b = Batcher::start(&ModelLabel::new("m", "1"), BatchingConfig::default(), metrics(), run);
        let rx = b.submit(tokens(1)).unwrap();
        assert!(matches!(rx.await.unwrap(), Err(ServeError::Inference(m)) if m == "boom"));
        let run: RunBatch = Box::new(|_| panic!("bad"));
        let b = Batcher::start(&ModelLabel::new("m", "1"), BatchingConfig::default(), metrics(), run);
        let rx = b.submit(tokens(1)).unwrap();
        assert!(matches!(rx.await.unwrap(), Err(ServeError::Inference(_))));
    }

    /// An input the model refuses fails its own request as a client error; the other inputs
    /// of its batch are answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_input_fails_alone_as_a_client_error() {
        let run: RunBatch = Box::new(|batch: &[Tokens]| {
            if batch.iter().any(|t| t.ids[0] == 13) {
                return Err(ServeError::BadInput("13 is unlucky".into()));
            }
            Ok((batch.iter().map(|t| vec![t.ids[0] as f32]).collect(), DeviceKind::Cpu))
        });
        let settings =
            BatchingConfig { max_batch_size: 8, max_queue_delay_us: 50_000, max_queue: 100, max_queue_wait_ms: 0 };
        let b = Batcher::start(&ModelLabel::new("m", "1"), settings, metrics(), run);
        let rxs: Vec<_> = [12, 13, 14].into_iter().map(|i| b.submit(tokens(i)).unwrap()).collect();
        let got: Vec<_> = futures_util::future::join_all(rxs).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(&*got[0].clone().unwrap().0, &[12.0]);
        assert!(matches!(&got[1], Err(ServeError::BadInput(m)) if m == "13 is unlucky"));
        assert_eq!(&*got[2].clone().unwrap().0, &[14.0]);
    }
}
