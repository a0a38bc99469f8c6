//! wedge-core: the parts of wedge that every backend and every user shares.
//!
//! It defines the weight formats and their packing ([`quant`]), the graph IR
//! ([`graph`]) and the plan compiler that schedules a graph into backend-neutral
//! steps with liveness-planned buffers ([`plan`]), graph builders for the model
//! families wedge runs ([`models`]), the `.wedge` package format ([`package`]), and the
//! GGUF reader with the plain definition of each GGUF tensor type ([`gguf`]).
//!
//! It must not depend on a GPU API, on threads or on file-system I/O beyond byte
//! slices and readers: it builds for `wasm32-unknown-unknown`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::type_complexity))]

mod error;
pub mod gguf;
pub mod graph;
pub mod models;
pub mod package;
pub mod plan;
pub mod quant;

pub use error::{Error, Result};
pub use graph::{Activation, Dim, Elem, Graph, Op, RopeMode, RopeScaling, ValueId, WeightId};
pub use package::{Package, PackageLimits, TensorEntry};
pub use plan::{HostTensor, Plan, Step, StepKind};
pub use quant::{Format, Weight};
