//! What a device says about its own health: its loss, and errors raised outside an error
//! scope (wgpu's default for those is a panic). A run checks both when its results are back,
//! so a fault fails that run with an error rather than a panic or a wrong answer.
//!
//! With the `fault-injection` feature (tests only) a switch on the context makes runs fail or
//! hang, to test what serves on top: the breaker that moves a model to the CPU.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::GpuError;

/// A fault to inject into every run on a context ([`crate::GpuContext::inject_fault`]).
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Runs fail with a device error.
    Fail,
    /// Runs wait, without end, until the fault is cleared (a hung submission).
    Hang,
}

#[derive(Debug, Default)]
struct Reports {
    lost: Option<String>,
    error: Option<String>,
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
    /// Runs that go well before the fault strikes.
    #[cfg(feature = "fault-injection")]
    spared: u64,
}

/// The reports of one device.
#[derive(Debug, Default)]
pub(crate) struct Health {
    reports: Mutex<Reports>,
    #[cfg(feature = "fault-injection")]
    changed: std::sync::Condvar,
}

impl Health {
    /// Starts taking `device`'s loss and uncaptured errors.
    pub(crate) fn watch(device: &wgpu::Device) -> Arc<Health> {
        let health = Arc::new(Health::default());
        let h = Arc::downgrade(&health);
        device.set_device_lost_callback(move |reason, message| {
            if let Some(h) = h.upgrade() {
                tracing::error!("GPU device lost ({reason:?}): {message}");
                h.lock().lost = Some(format!("{reason:?}: {message}"));
            }
        });
        let h = Arc::downgrade(&health);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Some(h) = h.upgrade() {
                tracing::error!("GPU error: {e}");
                h.lock().error.get_or_insert_with(|| e.to_string());
            }
        }));
        health
    }

    fn lock(&self) -> MutexGuard<'_, Reports> {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Err when the device is lost, or raised an error since the last check (which that error
    /// then fails); with an injected fault, fails, or waits until the fault is cleared.
    pub(crate) fn check(&self) -> Result<(), GpuError> {
        let mut r = self.lock();
        #[cfg(feature = "fault-injection")]
        loop {
            if r.fault.is_some() && r.spared > 0 {
                r.spared -= 1;
                break;
            }
            match r.fault {
                Some(Fault::Fail) => return Err(GpuError::Fault("injected fault: the submission failed".into())),
                Some(Fault::Hang) => r = self.changed.wait(r).unwrap_or_else(PoisonError::into_inner),
                None => break,
            }
        }
        if let Some(lost) = &r.lost {
            return Err(GpuError::Lost(lost.clone()));
        }
        match r.error.take() {
            Some(e) => Err(GpuError::Fault(e)),
            None => Ok(()),
        }
    }

    /// Sets (or with `None` clears) the injected fault, which strikes after `spared` more
    /// runs went well.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject(&self, fault: Option<Fault>, spared: u64) {
        let mut r = self.lock();
        (r.fault, r.spared) = (fault, spared);
        drop(r);
        self.changed.notify_all();
    }
}
