//! The circuit breaker between a model's GPU and the CPU.
//!
//! A model served on a GPU runs its batches (or scheduler steps) on a thread of its own, the
//! GPU thread, and the thread that hands them over waits at most the watchdog time for each:
//! a hung GPU never blocks a batch thread for longer. A run that fails (a GPU error, a lost
//! device, a panic) or times out opens the breaker: the model's traffic moves to a CPU copy
//! of the same file, made on first need ([`CpuCopy`]), and the run that faulted is rerun
//! there. While open, once `probe_after_ms` has passed and the GPU thread is free again, one
//! probe run goes to the GPU off the request path (half-open); when it succeeds, traffic goes
//! back to the GPU, and when it fails or hangs the breaker stays open for another period.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::ServeError;
use crate::config::BreakerConfig;
use crate::metrics::{DeviceLabel, Metrics, ModelLabel, TripLabel};

/// Where a run ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU backend.
    Cpu,
    /// A GPU.
    Gpu,
}

impl DeviceKind {
    /// `cpu` or `gpu` (the `x-wedge-device` header).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
        }
    }
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Runs go to the GPU.
    Closed,
    /// Runs go to the CPU.
    Open,
    /// Runs go to the CPU while a probe runs on the GPU.
    HalfOpen,
}

/// How a GPU run went wrong.
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    /// The run returned an error that is not the input's fault.
    Error(String),
    /// The run panicked.
    Panic,
    /// The run took longer than the watchdog allows.
    Timeout(Duration),
}

impl Fault {
    fn reason(&self) -> &'static str {
        match self {
            Fault::Error(_) => "error",
            Fault::Panic => "panic",
            Fault::Timeout(_) => "timeout",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Error(e) => f.write_str(e),
            Fault::Panic => f.write_str("the GPU run panicked"),
            Fault::Timeout(t) => write!(f, "the GPU run took longer than the watchdog's {} ms", t.as_millis()),
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

struct Inner {
    state: BreakerState,
    /// When the state last changed.
    since: Instant,
    /// Counts probes, so that the answer of one that was given up on is not taken.
    probe: u64,
}

struct Breaker {
    inner: Mutex<Inner>,
    config: BreakerConfig,
    label: ModelLabel,
    gpu_device: String,
    metrics: Arc<Metrics>,
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, inner: &mut Inner, state: BreakerState) {
        inner.state = state;
        inner.since = Instant::now();
        let code = match state {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        self.metrics.breaker_state.get_or_create(&self.label).set(code);
        let on_gpu = i64::from(state == BreakerState::Closed);
        let device = |device: &str| DeviceLabel {
            model: self.label.model.clone(),
            version: self.label.version.clone(),
            device: device.to_string(),
        };
        self.metrics.device.get_or_create(&device(&self.gpu_device)).set(on_gpu);
        self.metrics.device.get_or_create(&device("cpu")).set(1 - on_gpu);
    }

    /// Opens the breaker after `fault` (`reason` for the metric).
    fn trip(&self, inner: &mut Inner, reason: &'static str, fault: &Fault) {
        let label = TripLabel { model: self.label.model.clone(), version: self.label.version.clone(), reason };
        self.metrics.breaker_trips.get_or_create(&label).inc();
        tracing::error!(
            model = %self.label.model, version = %self.label.version, reason,
            "GPU fault, the model's traffic moves to the CPU: {fault}"
        );
        self.set(inner, BreakerState::Open);
    }

    fn probe_done(&self, probe: u64, result: Result<(), Fault>) {
        let mut inner = self.lock();
        if inner.state != BreakerState::HalfOpen || inner.probe != probe {
            return; // given up on already
        }
        match result {
            Ok(()) => {
                tracing::info!(model = %self.label.model, version = %self.label.version, "the GPU answers again: traffic goes back to it");
                self.set(&mut inner, BreakerState::Closed);
            }
            Err(fault) => self.trip(&mut inner, "probe", &fault),
        }
    }
}

/// A model's GPU thread and breaker.
pub(crate) struct GpuGuard {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Jobs handed to the GPU thread and not done (a hung run keeps it above 0: no probe is
    /// sent then).
    pending: Arc<AtomicUsize>,
    /// Whether the watchdog times runs: not while the model warms up (a first compile of its
    /// kernels may take seconds).
    armed: Arc<AtomicBool>,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for GpuGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuGuard").field("model", &self.breaker.label).field("state", &self.state()).finish()
    }
}

/// Runs `f`, a panic being [`Fault::Panic`].
fn caught<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, Fault> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Fault::Error(e)),
        Err(_) => Err(Fault::Panic),
    }
}

impl GpuGuard {
    /// Starts the GPU thread of `label` (whose GPU `gpu_device` names, as in the `wedge_device`
    /// metric), closed.
    pub(crate) fn start(
        label: &ModelLabel,
        gpu_device: String,
        config: BreakerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<GpuGuard, ServeError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let p = pending.clone();
        // Not joined: a thread stuck in a hung GPU run ends when the run does, its answer
        // going nowhere.
        std::thread::Builder::new()
            .name(format!("wedge-gpu-{}", label.model))
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                    p.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .map_err(|e| ServeError::Config(format!("cannot start the GPU thread of `{}`: {e}", label.model)))?;
        let breaker = Arc::new(Breaker {
            inner: Mutex::new(Inner { state: BreakerState::Closed, since: Instant::now(), probe: 0 }),
            config,
            label: label.clone(),
            gpu_device,
            metrics,
        });
        breaker.metrics.breaker_state.get_or_create(label).set(0);
        Ok(GpuGuard { jobs: Mutex::new(tx), pending, armed: Arc::new(AtomicBool::new(false)), breaker })
    }

    /// The switch that starts the watchdog (off at first, while the model warms up).
    pub(crate) fn watchdog_switch(&self) -> Arc<AtomicBool> {
        self.armed.clone()
    }

    /// The breaker's state.
    pub(crate) fn state(&self) -> BreakerState {
        self.breaker.lock().state
    }

    fn watchdog(&self) -> Duration {
        Duration::from_millis(self.breaker.config.watchdog_ms)
    }

    /// Hands `job` to the GPU thread; false when that thread is gone.
    fn send(&self, job: Job) -> bool {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let sent = self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).send(job).is_ok();
        if !sent {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Whether the next run goes to the GPU. While the breaker is open, once `probe_after_ms`
    /// has passed and the GPU thread is free, starts `probe` there; runs stay on the CPU until
    /// it succeeds. A probe that outlasts the watchdog counts as failed.
    pub(crate) fn use_gpu(&self, probe: impl FnOnce() -> Result<(), String> + Send + 'static) -> bool {
        let b = &self.breaker;
        let mut inner = b.lock();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => {
                let waited = inner.since.elapsed();
                if waited > self.watchdog() {
                    b.trip(&mut inner, "probe", &Fault::Timeout(self.watchdog()));
                }
                false
            }
            BreakerState::Open => {
                let rest = Duration::from_millis(b.config.probe_after_ms);
                if inner.since.elapsed() >= rest && self.pending.load(Ordering::SeqCst) == 0 {
                    inner.probe += 1;
                    let n = inner.probe;
                    b.set(&mut inner, BreakerState::HalfOpen);
                    drop(inner);
                    let breaker = self.breaker.clone();
                    if !self.send(Box::new(move || breaker.probe_done(n, caught(probe)))) {
                        let mut inner = b.lock();
                        b.trip(&mut inner, "probe", &Fault::Error("the GPU thread is gone".into()));
                    }
                }
                false
            }
        }
    }

    /// Runs `job` on the GPU thread and waits for it at most the watchdog time. An `Err` from
    /// `job` is a device fault (input errors belong in `T`); a fault opens the breaker.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, Fault> {
        let (tx, rx) = mpsc::sync_channel(1);
        let result = if self.send(Box::new(move || {
            let _ = tx.send(caught(job)); // the waiter may have given up
        })) {
            if self.armed.load(Ordering::Relaxed) {
                rx.recv_timeout(self.watchdog()).unwrap_or_else(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => Err(Fault::Timeout(self.watchdog())),
                    mpsc::RecvTimeoutError::Disconnected => Err(Fault::Panic),
                })
            } else {
                rx.recv().unwrap_or(Err(Fault::Panic))
            }
        } else {
            Err(Fault::Error("the GPU thread is gone".into()))
        };
        if let Err(fault) = &result {
            let mut inner = self.breaker.lock();
            if inner.state == BreakerState::Closed {
                self.breaker.trip(&mut inner, fault.reason(), fault);
            }
        }
        result
    }

    /// Counts a run that went to the CPU instead of the GPU.
    pub(crate) fn ran_on_cpu(&self) {
        self.breaker.metrics.breaker_cpu_runs.get_or_create(&self.breaker.label).inc();
    }
}

/// A CPU copy of a GPU model, made on first need and kept.
pub(crate) struct CpuCopy<T> {
    made: Mutex<Option<Arc<T>>>,
    make: Box<dyn Fn() -> Result<T, ServeError> + Send + Sync>,
}

impl<T> std::fmt::Debug for CpuCopy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuCopy").finish_non_exhaustive()
    }
}

impl<T> CpuCopy<T> {
    /// A copy that `make` builds.
    pub(crate) fn new(make: impl Fn() -> Result<T, ServeError> + Send + Sync + 'static) -> CpuCopy<T> {
        CpuCopy { made: Mutex::new(None), make: Box::new(make) }
    }

    /// The copy, made now if it was not yet (a failure is tried again next time).
    pub(crate) fn get(&self) -> Result<Arc<T>, ServeError> {
        let mut made = self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = &*made {
            return Ok(m.clone());
        }
        let t0 = Instant::now();
        let m = Arc::new((self.make)()?);
        tracing::info!(seconds = t0.elapsed().as_secs_f64(), "CPU copy of a GPU model made");
        *made = Some(m.clone());
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn guard(watchdog_ms: u64, probe_after_ms: u64) -> (GpuGuard, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let config = BreakerConfig { enabled: true, watchdog_ms, probe_after_ms };
        let g = GpuGuard::start(&ModelLabel::new("m", "1"), "gpu: test".into(), config, metrics.clone()).unwrap();
        g.watchdog_switch().store(true, Ordering::Relaxed);
        (g, metrics)
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !done() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_error_opens_and_a_good_probe_closes() {
        let (g, metrics) = guard(1_000, 20);
        assert!(g.use_gpu(|| Ok(())));
        assert_eq!(g.run(|| Ok(7)).unwrap(), 7);
        assert!(matches!(g.run(|| Err::<(), _>("device lost".into())), Err(Fault::Error(m)) if m == "device lost"));
        assert_eq!(g.state(), BreakerState::Open);
        assert!(!g.use_gpu(|| Ok(())), "open: to the CPU, no probe before probe_after_ms");
        let trips = |reason| {
            metrics.breaker_trips.get_or_create(&TripLabel { model: "m".into(), version: "1".into(), reason }).get()
        };
        std::thread::sleep(Duration::from_millis(30));
        // a failing probe keeps it open
        assert!(!g.use_gpu(|| Err("still broken".into())));
        wait_for("the failed probe", || trips("probe") == 1);
        assert_eq!(g.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(30));
        assert!(!g.use_gpu(|| Ok(())));
        wait_for("the good probe", || g.state() == BreakerState::Closed);
        assert!(g.use_gpu(|| Ok(())));
        assert_eq!((trips("error"), trips("probe")), (1, 1));
        assert_eq!(metrics.breaker_state.get_or_create(&ModelLabel::new("m", "1")).get(), 0);
        // a panic is a fault too
        assert!(matches!(g.run(|| -> Result<(), String> { panic!("boom") }), Err(Fault::Panic)));
        assert_eq!(g.state(), BreakerState::Open);
    }

    #[test]
    fn a_hung_run_is_given_up_on_and_no_probe_waits_behind_it() {
        let (g, _) = guard(50, 10);
        let (release, hung) = mpsc::channel::<()>();
        let t0 = Instant::now();
        let r = g.run(move || {
            let _ = hung.recv(); // hangs until released
            Ok(1)
        });
        assert!(matches!(r, Err(Fault::Timeout(_))));
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(g.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(30));
        // the GPU thread is still stuck: no probe is sent, the breaker stays open
        assert!(!g.use_gpu(|| Ok(())));
        assert_eq!(g.state(), BreakerState::Open);
        release.send(()).unwrap();
        wait_for("the GPU thread to come free", || g.pending.load(Ordering::SeqCst) == 0);
        assert!(!g.use_gpu(|| Ok(())));
        wait_for("the probe", || g.state() == BreakerState::Closed);
        // a probe that hangs is given up on after the watchdog
        g.run(|| Err::<(), _>("again".into())).unwrap_err();
        std::thread::sleep(Duration::from_millis(15));
        let (release, hung) = mpsc::channel::<()>();
        assert!(!g.use_gpu(move || {
            let _ = hung.recv();
            Ok(())
        }));
        assert_eq!(g.state(), BreakerState::HalfOpen);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!g.use_gpu(|| Ok(())));
        assert_eq!(g.state(), BreakerState::Open);
        release.send(()).unwrap(); // its late success is not taken
        wait_for("the GPU thread to come free", || g.pending.load(Ordering::SeqCst) == 0);
        assert_eq!(g.state(), BreakerState::Open);
    }
}
