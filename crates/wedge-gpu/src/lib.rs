//! wedge-gpu: the GPU backend on wgpu (Vulkan, Metal, DX12, GL natively; WebGPU
//! in a browser). It owns the device, the pipeline cache keyed by
//! [`KernelKey`](wedge_shaders::KernelKey), weight upload, activation buffers and
//! readback, and executes a [`Plan`](wedge_core::Plan) step by step.
//!
//! It picks kernel shapes from what the adapter reports (workgroup limits,
//! software or hardware device) and never requires optional features: the same
//! plan runs on an adapter without `shader-f16` or subgroups and with 256
//! invocations per workgroup. Public wgpu types appear only in [`gpu`].

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::type_complexity))]

mod context;
mod exec;
mod health;

pub use context::{AdapterChoice, AdapterSummary, GpuContext};
pub use exec::{GpuState, GpuWeights, ResidentRun, execute};
#[cfg(feature = "fault-injection")]
pub use health::Fault;

use thiserror::Error;

/// Errors from the GPU backend.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No adapter that fits the request.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused a device.
    #[error("could not open the GPU device: {0}")]
    Device(String),
    /// A pipeline failed to build.
    #[error("kernel {key} failed to build: {message}")]
    Pipeline {
        /// The kernel's label.
        key: String,
        /// naga's or the driver's message.
        message: String,
    },
    /// A buffer is larger than the adapter allows.
    #[error("{what} needs {bytes} bytes, over the adapter's storage binding limit of {limit}")]
    TooLarge {
        /// What the buffer holds.
        what: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A dispatch is larger than the adapter allows.
    #[error("{0}")]
    Dispatch(String),
    /// The adapter lacks something a kernel of this plan needs.
    #[error("{0}")]
    Unsupported(String),
    /// The device was lost (driver reset, GPU removed, out of memory on some drivers).
    #[error("the GPU device was lost: {0}")]
    Lost(String),
    /// The device reported an error while running.
    #[error("GPU error: {0}")]
    Fault(String),
    /// Reading results back failed.
    #[error("readback failed: {0}")]
    Readback(String),
    /// A core error (bad inputs).
    #[error(transparent)]
    Core(#[from] wedge_core::Error),
    /// A weight is not usable the way the plan uses it.
    #[error("weight `{name}`: {msg}")]
    Weight {
        /// Weight name.
        name: String,
        /// The problem.
        msg: String,
    },
}

/// The wgpu types that embedding applications may need (for sharing a device).
pub mod gpu {
    pub use wgpu::{Adapter, Device, Queue};
}
