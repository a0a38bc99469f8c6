//! wedge: portable inference with INT8/INT4 weights on wgpu (Vulkan, Metal, DX12),
//! WebGPU in the browser, and a CPU backend behind the same plan.
//!
//! ```no_run
//! # fn main() -> Result<(), wedge::Error> {
//! let device = wedge::Device::auto();           // a hardware GPU, else the CPU
//! let bytes = std::fs::read("model.wedge")?;
//! let model = wedge::Model::from_bytes(&bytes)?;
//! let session = model.session(&device)?;
//! # let inputs = vec![];
//! let outputs = session.run(&inputs)?;
//! # Ok(()) }
//! ```
//!
//! This crate is the facade: a small API over wedge-core (formats, graph, plans),
//! wedge-cpu and wedge-gpu. It re-exports by name what applications need.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::type_complexity))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

mod embed;
mod generate;
mod lm;
pub mod openai;
mod sample;
mod vocab;
pub use embed::{DEFAULT_MAX_BATCH, Embedder, Tokens, length_batches};
pub use generate::Generation;
pub use generate::{Continuation, FinishReason, GenerateParams, GenerationStats, TextStream, TokenEvent};
pub use lm::{DecodeState, KvType, LanguageModel, LmOptions, SeqId};
pub use sample::{Sampled, Sampler, SamplingParams, argmax, log_softmax_at, top_logprobs};
pub use vocab::{ChatMessage, KNOWN_PRE, Vocab, render_chat};
pub use wedge_cpu::{integer_kernels as cpu_integer_kernels, threads as cpu_threads};

pub use wedge_core::gguf::{GgmlType, Gguf};
pub use wedge_core::graph::StateElem;
pub use wedge_core::graph::{Activation, Dim, Elem, Graph, Op, RopeMode, RopeScaling, ValueId, WeightId};
pub use wedge_core::models::{CLS_ROWS, DECODER, DecoderConfig, ENCODER, EncoderConfig, ModelGraph, NormKind, Pooling};
pub use wedge_core::package::{
    PREFIX_LEN, Package, PackageLimits, ParsedHeader, header_len, read_header, read_header_of,
};
pub use wedge_core::plan::{HostTensor, Plan, WeightInfo};
pub use wedge_core::quant::{Format, Weight};
pub use wedge_gpu::{AdapterChoice, AdapterSummary};

/// A package's assets (tokenizer files and the like) by name.
pub type Assets = std::collections::BTreeMap<String, Vec<u8>>;

/// wgpu types, for applications that share a device with wedge.
pub mod gpu {
    pub use wedge_gpu::GpuContext;
    pub use wedge_gpu::gpu::{Adapter, Device, Queue};
}

/// Errors from wedge.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Formats, graphs, plans, inputs.
    #[error(transparent)]
    Core(#[from] wedge_core::Error),
    /// The CPU backend.
    #[error(transparent)]
    Cpu(#[from] wedge_cpu::CpuError),
    /// The GPU backend.
    #[error(transparent)]
    Gpu(#[from] wedge_gpu::GpuError),
    /// Reading a model file.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A language model's tokenizer cannot be built, or text cannot be encoded.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template does not render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

impl Error {
    /// Whether the caller's input is at fault (inputs that do not fit the model, text the
    /// tokenizer refuses), as opposed to the model, its file or the device: a server answers
    /// the first with a client error.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Error::Core(wedge_core::Error::Input(_))
                | Error::Cpu(wedge_cpu::CpuError::Core(wedge_core::Error::Input(_)))
                | Error::Tokenizer(_)
        )
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
enum Backend {
    Cpu,
    Gpu(Arc<wedge_gpu::GpuContext>),
}

/// Where a model runs.
#[derive(Clone, Debug)]
pub struct Device {
    backend: Backend,
    fallback: Option<String>,
}

impl Device {
    /// The CPU backend.
    pub fn cpu() -> Device {
        Device { backend: Backend::Cpu, fallback: None }
    }

    /// Opens a GPU adapter (software ones included, since it was asked for by name).
    // wgpu objects are not Send on wasm32 (one thread there); Arc is what native needs.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub async fn gpu_async() -> Result<Device> {
        let ctx = wedge_gpu::GpuContext::new(AdapterChoice::Any).await?;
        Ok(Device { backend: Backend::Gpu(Arc::new(ctx)), fallback: None })
    }

    /// A hardware GPU adapter if there is one, else the CPU, with the reason kept in
    /// [`Device::fallback_reason`].
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub async fn auto_async() -> Device {
        match wedge_gpu::GpuContext::new(AdapterChoice::Hardware).await {
            Ok(ctx) => Device { backend: Backend::Gpu(Arc::new(ctx)), fallback: None },
            Err(e) => Device { backend: Backend::Cpu, fallback: Some(e.to_string()) },
        }
    }

    /// Blocking [`Device::gpu_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn gpu() -> Result<Device> {
        pollster::block_on(Device::gpu_async())
    }

    /// Blocking [`Device::auto_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn auto() -> Device {
        pollster::block_on(Device::auto_async())
    }

    /// Why `auto` chose the CPU, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Whether this is a GPU.
    pub fn is_gpu(&self) -> bool {
        matches!(self.backend, Backend::Gpu(_))
    }

    /// The adapter, for a GPU device.
    pub fn adapter(&self) -> Option<&AdapterSummary> {
        match &self.backend {
            Backend::Gpu(ctx) => Some(ctx.summary()),
            Backend::Cpu => None,
        }
    }

    /// The GPU context, for a GPU device.
    pub fn gpu_context(&self) -> Option<&wedge_gpu::GpuContext> {
        match &self.backend {
            Backend::Gpu(ctx) => Some(ctx),
            Backend::Cpu => None,
        }
    }

    /// `cpu` or the adapter's description.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Cpu => "cpu".to_string(),
            Backend::Gpu(ctx) => format!("gpu: {}", ctx.summary()),
        }
    }
}

/// A model: its graph and weights, from a `.wedge` package or built in code.
#[derive(Debug)]
pub struct Model {
    graph: Graph,
    weights: Vec<Weight>,
    package: Option<(String, serde_json::Value)>,
    digest: Option<String>,
}

impl Model {
    /// Loads a `.wedge` package from bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        Ok(Model::from_bytes_with_assets(bytes)?.0)
    }

    /// Loads a package and also returns its assets and its config.
    pub fn from_bytes_with_assets(bytes: &[u8]) -> Result<(Model, Assets, serde_json::Value)> {
        Model::from_parsed(bytes, read_header(bytes, &PackageLimits::default())?)
    }

    /// [`Model::from_bytes_with_assets`] of a package whose header [`read_header`] has parsed
    /// already (`head`, from these `bytes`).
    pub fn from_parsed(bytes: &[u8], head: ParsedHeader) -> Result<(Model, Assets, serde_json::Value)> {
        // the graph first, from the header: an unknown architecture or a config that does not
        // build is refused before any section is decompressed
        let mg = wedge_core::models::build(&head.header.architecture, &head.header.config)?;
        let (pkg, digest) = Package::from_parsed(bytes, head)?;
        let weights = mg.take_weights(pkg.tensors)?;
        let model = Model {
            graph: mg.graph,
            weights,
            package: Some((pkg.architecture, pkg.config.clone())),
            digest: Some(digest),
        };
        Ok((model, pkg.assets, pkg.config))
    }

    /// A model from a graph and its weights (in the order of `graph.weights`).
    pub fn from_graph(graph: Graph, weights: Vec<Weight>) -> Result<Model> {
        graph.validate()?;
        if weights.len() != graph.weights.len() {
            return Err(wedge_core::Error::Graph(format!(
                "graph refers to {} weights, {} given",
                graph.weights.len(),
                weights.len()
            ))
            .into());
        }
        Ok(Model { graph, weights, package: None, digest: None })
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The weights.
    pub fn weights(&self) -> &[Weight] {
        &self.weights
    }

    /// Architecture name, for a model loaded from a package.
    pub fn architecture(&self) -> Option<&str> {
        self.package.as_ref().map(|(a, _)| a.as_str())
    }

    /// The package digest (hex SHA-256 of its header), for a model loaded from a package.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Prepares the model on a device (uploads weights for a GPU).
    pub fn session(&self, device: &Device) -> Result<Session> {
        Session::new(device, self.graph.clone(), self.weights.clone())
    }
}

enum Weights {
    Cpu(wedge_cpu::CpuWeights),
    Gpu(Arc<wedge_gpu::GpuContext>, wedge_gpu::GpuWeights),
}

/// How a session runs its matmuls on the CPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SessionOptions {
    /// Round activations to 16-bit integers for the integer kernels of `q8`, `q4` and `q4_1`
    /// weights where the CPU has them (AVX2): faster, and within about 1e-4 of f32 per matmul.
    /// Off, every matmul dequantizes its weights to f32 and sums in f32.
    pub cpu_integer_kernels: bool,
}

/// Memory for the states of a session's graph (a decoder's key/value caches) on its device,
/// owned by the caller and passed to [`Session::run_with_state`]. Every run that gets it reads
/// and writes it in place.
pub struct State {
    shapes: Vec<Vec<usize>>,
    mem: StateMem,
    /// The session that made it (its runs bind that session's weights).
    session: u64,
    /// GPU runs prepared over this state's buffers, by input shapes: a step of a shape seen
    /// before uploads its inputs and dispatches, nothing more.
    runs: HashMap<Vec<Vec<usize>>, wedge_gpu::ResidentRun>,
}

/// Input shapes a session or a state keeps prepared GPU runs for.
const MAX_PREPARED_RUNS: usize = 16;

/// Device memory the activation buffers of a session's pooled GPU runs may hold: a server
/// sees many shapes, and a pooled run keeps its buffers while it waits.
const MAX_POOLED_BYTES: u64 = 256 << 20;

enum StateMem {
    Cpu(Vec<Vec<u32>>),
    Gpu(wedge_gpu::GpuState),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("shapes", &self.shapes).field("bytes", &self.bytes()).finish()
    }
}

impl State {
    /// The shape of each state.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// Bytes of memory the states take.
    pub fn bytes(&self) -> u64 {
        match &self.mem {
            StateMem::Cpu(v) => v.iter().map(|s| 4 * s.len() as u64).sum(),
            StateMem::Gpu(g) => g.bytes(),
        }
    }
}

/// Key of a session's plan cache: the input shapes, then the state shapes.
type PlanKey = (Vec<Vec<usize>>, Vec<Vec<usize>>);

/// A model bound to a device, with compiled plans cached by input shape.
pub struct Session {
    graph: Graph,
    infos: Vec<WeightInfo>,
    weights: Weights,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
    /// GPU runs prepared for input shapes seen before (buffers, uniforms and bind groups
    /// built once), taken out while they run so that concurrent runs never share one.
    runs: Mutex<HashMap<Vec<Vec<usize>>, Vec<wedge_gpu::ResidentRun>>>,
    id: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("weights", &self.infos.len()).finish_non_exhaustive()
    }
}

impl Session {
    /// Binds a graph and its weights to a device.
    pub fn new(device: &Device, graph: Graph, weights: Vec<Weight>) -> Result<Session> {
        Session::with_options(device, graph, weights, SessionOptions { cpu_integer_kernels: true })
    }

    /// Binds a graph and its weights to a device, with options.
    pub fn with_options(
        device: &Device,
        graph: Graph,
        weights: Vec<Weight>,
        options: SessionOptions,
    ) -> Result<Session> {
        graph.validate()?;
        let infos = weights.iter().map(WeightInfo::from).collect();
        let weights = match &device.backend {
            Backend::Cpu => {
                Weights::Cpu(wedge_cpu::CpuWeights::for_graph_with(&graph, weights, options.cpu_integer_kernels))
            }
            Backend::Gpu(ctx) => {
                let w = wedge_gpu::GpuWeights::upload(ctx, &weights)?;
                Weights::Gpu(ctx.clone(), w)
            }
        };
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Session { graph, infos, weights, plans: Mutex::new(HashMap::new()), runs: Mutex::new(HashMap::new()), id })
    }

    /// The plan for inputs of these shapes (compiled once per distinct shape set).
    pub fn plan(&self, shapes: &[Vec<usize>]) -> Result<Arc<Plan>> {
        self.plan_with_states(shapes, &[])
    }

    /// The plan for inputs and states of these shapes (compiled once per distinct shape set).
    pub fn plan_with_states(&self, shapes: &[Vec<usize>], states: &[Vec<usize>]) -> Result<Arc<Plan>> {
        let key = (shapes.to_vec(), states.to_vec());
        if let Some(p) = self.plans.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(p);
        }
        let plan = Arc::new(Plan::compile_with_states(&self.graph, &self.infos, shapes, states)?);
        if let Ok(mut m) = self.plans.lock() {
            // bounded: a server sees many shapes
            if m.len() >= 256 {
                m.clear();
            }
            m.insert(key, plan.clone());
        }
        Ok(plan)
    }

    /// Runs the graph and returns its outputs in the graph's output order.
    pub async fn run_async(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
        let plan = self.plan(&shapes)?;
        Ok(match &self.weights {
            Weights::Cpu(w) => wedge_cpu::execute(&plan, w, inputs)?,
            Weights::Gpu(ctx, w) => {
                let taken = self.runs.lock().ok().and_then(|mut r| r.get_mut(&shapes).and_then(Vec::pop));
                let run = match taken {
                    Some(run) => run,
                    None => wedge_gpu::ResidentRun::prepare(ctx, plan.clone(), w).await?,
                };
                let out = run.run(inputs).await?;
                if let Ok(mut runs) = self.runs.lock() {
                    let pooled: u64 = runs.values().flatten().map(wedge_gpu::ResidentRun::activation_bytes).sum();
                    let full = runs.len() >= MAX_PREPARED_RUNS && !runs.contains_key(&shapes);
                    if full || pooled + run.activation_bytes() > MAX_POOLED_BYTES {
                        runs.clear();
                    }
                    runs.entry(shapes).or_default().push(run);
                }
                out
            }
        })
    }

    /// Blocking [`Session::run_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        pollster::block_on(self.run_async(inputs))
    }

    /// Zeroed memory on this session's device for the graph's states, of the given shapes
    /// (in the order of `graph.states`; symbolic dimensions bound as for inputs).
    pub fn new_state(&self, shapes: &[Vec<usize>]) -> Result<State> {
        let decls = &self.graph.states;
        if shapes.len() != decls.len() {
            return Err(wedge_core::Error::Input(format!(
                "the graph has {} states, {} shapes given",
                decls.len(),
                shapes.len()
            ))
            .into());
        }
        let mut words = Vec::with_capacity(shapes.len());
        for (d, s) in decls.iter().zip(shapes) {
            let n = s.iter().try_fold(1usize, |a, &x| a.checked_mul(x)).filter(|n| *n <= isize::MAX as usize / 4);
            let n = n.ok_or_else(|| wedge_core::Error::Input(format!("state `{}` shape {s:?} overflows", d.name)))?;
            words.push(d.elem.words(n));
        }
        let mem = match &self.weights {
            Weights::Cpu(_) => StateMem::Cpu(words.iter().map(|&w| vec![0u32; w]).collect()),
            Weights::Gpu(ctx, _) => StateMem::Gpu(wedge_gpu::GpuState::new(ctx, &words)?),
        };
        Ok(State { shapes: shapes.to_vec(), mem, session: self.id, runs: HashMap::new() })
    }

    /// Runs the graph over `state` (from [`Session::new_state`]), which it reads and writes in
    /// place, and returns its outputs in the graph's output order.
    pub async fn run_with_state_async(&self, inputs: &[HostTensor], state: &mut State) -> Result<Vec<HostTensor>> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
        if state.session != self.id {
            return Err(wedge_core::Error::Input("the state was made by another session".into()).into());
        }
        let plan = self.plan_with_states(&shapes, &state.shapes)?;
        Ok(match (&self.weights, &mut state.mem) {
            (Weights::Cpu(w), StateMem::Cpu(mem)) => wedge_cpu::execute_with_states(&plan, w, inputs, mem)?,
            (Weights::Gpu(ctx, w), StateMem::Gpu(mem)) => {
                if state.runs.len() >= MAX_PREPARED_RUNS && !state.runs.contains_key(&shapes) {
                    state.runs.clear();
                }
                let run = match state.runs.entry(shapes) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(wedge_gpu::ResidentRun::prepare_with_state(ctx, plan, w, Some(mem)).await?)
                    }
                };
                run.run(inputs).await?
            }
            _ => {
                return Err(wedge_core::Error::Input("the state was made for another device".into()).into());
            }
        })
    }

    /// Blocking [`Session::run_with_state_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_with_state(&self, inputs: &[HostTensor], state: &mut State) -> Result<Vec<HostTensor>> {
        pollster::block_on(self.run_with_state_async(inputs, state))
    }

    /// Whether the session runs on the CPU backend.
    pub fn on_cpu(&self) -> bool {
        matches!(self.weights, Weights::Cpu(_))
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
}
