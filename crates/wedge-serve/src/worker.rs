//! What the embedding batcher and the language-model scheduler share: a queue that a model's
//! worker thread waits on, closed at shutdown, and the thread itself, joined at shutdown.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The queued items and whether new ones are refused.
pub(crate) struct Queue<T> {
    pub(crate) items: VecDeque<T>,
    pub(crate) closed: bool,
}

/// A queue and the condition its worker waits on.
pub(crate) struct WorkQueue<T> {
    queue: Mutex<Queue<T>>,
    wake: Condvar,
}

impl<T> WorkQueue<T> {
    pub(crate) fn new() -> WorkQueue<T> {
        WorkQueue { queue: Mutex::new(Queue { items: VecDeque::new(), closed: false }), wake: Condvar::new() }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // A poisoned lock only means a panic elsewhere while holding it; the queue stays usable.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a [`WorkQueue::notify`] or [`WorkQueue::close`].
    pub(crate) fn wait<'a>(&self, q: MutexGuard<'a, Queue<T>>) -> MutexGuard<'a, Queue<T>> {
        self.wake.wait(q).unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`WorkQueue::wait`], at most `timeout` long.
    pub(crate) fn wait_timeout<'a>(&self, q: MutexGuard<'a, Queue<T>>, timeout: Duration) -> MutexGuard<'a, Queue<T>> {
        self.wake.wait_timeout(q, timeout).unwrap_or_else(std::sync::PoisonError::into_inner).0
    }

    /// Wakes the worker after an item was queued.
    pub(crate) fn notify(&self) {
        self.wake.notify_one();
    }

    /// Refuses new items; the worker drains the queued ones and ends.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

/// A model's worker thread, joined once.
pub(crate) struct WorkerThread {
    model: String,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WorkerThread {
    /// Starts `work` on a thread named `wedge-{kind}-{model}`.
    pub(crate) fn spawn(
        kind: &str,
        model: &str,
        work: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<WorkerThread> {
        let handle = std::thread::Builder::new().name(format!("wedge-{kind}-{model}")).spawn(work)?;
        Ok(WorkerThread { model: model.to_string(), handle: Mutex::new(Some(handle)) })
    }

    /// Waits for the thread to end (call after closing its queue); later calls return at once.
    pub(crate) fn join(&self) {
        let handle = self.handle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!(model = %self.model, "the worker thread panicked");
        }
    }
}
