//! Adapter selection, device creation, capability detection and the pipeline cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use wedge_shaders::{BindingKind, Family, KernelKey};

use crate::GpuError;

/// Which adapters are acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterChoice {
    /// Hardware adapters only: a software rasterizer (lavapipe, SwiftShader) is slower
    /// than the CPU backend, so `Device::auto()` does not take one.
    Hardware,
    /// Any adapter, software ones included (asked for by name, e.g. `--device gpu`).
    Any,
}

/// What the adapter is, for logs, metrics and `wedge bench`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name.
    pub name: String,
    /// Backend (`vulkan`, `metal`, `dx12`, `gl`, `webgpu`).
    pub backend: String,
    /// Device type (`DiscreteGpu`, `Cpu`, ...).
    pub device_type: String,
    /// A software implementation.
    pub software: bool,
    /// `shader-f16` is available (not required by any kernel; used by the f16 GEMM when
    /// on, see [`GpuContext::set_f16`]).
    pub shader_f16: bool,
    /// Subgroup operations are available (not required by any kernel; used by the
    /// subgroup GEMV when on, see [`GpuContext::set_subgroups`]).
    pub subgroups: bool,
    /// Smallest and largest subgroup size the adapter reports.
    pub subgroup_sizes: (u32, u32),
    /// WGSL has `dot4I8Packed` (`packed_4x8_integer_dot_product`; natively always, naga
    /// lowers it to the driver's integer dot product or to plain arithmetic). `q8a8`
    /// matmuls need it.
    pub dot4: bool,
    /// Most invocations per workgroup.
    pub max_invocations: u32,
    /// Largest storage buffer binding.
    pub max_storage_binding: u64,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // browsers may hide the adapter's name
        let name = if self.name.trim().is_empty() { "unnamed adapter" } else { self.name.as_str() };
        write!(f, "{name} ({}, {}", self.backend, self.device_type)?;
        if self.software {
            f.write_str(", software")?;
        }
        if self.subgroups {
            let (lo, hi) = self.subgroup_sizes;
            if lo == hi { write!(f, ", subgroups of {lo}")? } else { write!(f, ", subgroups of {lo}-{hi}")? }
        }
        if self.shader_f16 {
            f.write_str(", shader-f16")?;
        }
        f.write_str(")")
    }
}

/// Kernel shapes chosen for this adapter.
#[derive(Clone, Debug)]
pub(crate) struct Tuning {
    pub(crate) gemv_wg: u32,
    pub(crate) gemv_tpr: u32,
    pub(crate) gemm_ts: u32,
    pub(crate) wg: u32,
    pub(crate) attention_wg: u32,
}

struct FamilyLayout {
    bgl: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
}

/// An open GPU device with its pipeline cache.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) summary: AdapterSummary,
    pub(crate) tuning: Tuning,
    pub(crate) limits: wgpu::Limits,
    layouts: HashMap<Family, FamilyLayout>,
    pipelines: Mutex<HashMap<KernelKey, Arc<wgpu::ComputePipeline>>>,
    pub(crate) dummy: wgpu::Buffer,
    pub(crate) health: Arc<crate::health::Health>,
    /// Use the tiled (workgroup-memory) GEMM for many rows; otherwise the barrier-free
    /// row-block kernel, which needs no workgroup memory.
    tiled_gemm: AtomicBool,
    /// Use the subgroup GEMV (only ever true when the device has subgroups).
    subgroups: AtomicBool,
    /// Use the f16 GEMM (only ever true when the device has shader-f16).
    f16: AtomicBool,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext").field("adapter", &self.summary).finish_non_exhaustive()
    }
}

fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl GpuContext {
    /// Opens the best adapter that `choice` allows.
    pub async fn new(choice: AdapterChoice) -> Result<GpuContext, GpuError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pick_adapter(&instance).await?;
        let info = adapter.get_info();
        let software = info.device_type == wgpu::DeviceType::Cpu;
        if software && choice == AdapterChoice::Hardware {
            return Err(GpuError::NoAdapter(format!(
                "only a software adapter ({}) is present; ask for it by name to use it",
                info.name
            )));
        }
        let limits = adapter.limits();
        let features = adapter.features();
        // optional features wedge has kernels for; none is required
        let wanted = features & (wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16);
        let desc = wgpu::DeviceDescriptor {
            label: Some("wedge"),
            required_features: wanted,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        };
        let (device, queue) = adapter.request_device(&desc).await.map_err(|e| GpuError::Device(e.to_string()))?;
        let limits = device.limits();
        let health = crate::health::Health::watch(&device);
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend).to_lowercase(),
            device_type: format!("{:?}", info.device_type),
            software,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
            dot4: instance.wgsl_language_features().contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct),
            max_invocations: limits.max_compute_invocations_per_workgroup,
            max_storage_binding: limits.max_storage_buffer_binding_size,
        };
        let tuning = tune(&summary, &limits);
        let layouts = Family::ALL.iter().map(|&f| (f, family_layout(&device, f))).collect();
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wedge.dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        tracing::info!(adapter = %summary, "GPU device opened");
        // measured on lavapipe too: the tiled GEMM beats the row-block kernel 2x at 128 rows
        let tiled_gemm = AtomicBool::new(true);
        // the subgroup GEMV wherever the device has subgroups: even on lavapipe it beats
        // the column-per-invocation GEMV 1.7-2.5x (`cargo bench -p wedge --bench kernels`)
        let subgroups = AtomicBool::new(summary.subgroups && env_switch("WEDGE_GPU_SUBGROUPS").unwrap_or(true));
        // f16 arithmetic where the device has it, on hardware: it halves the GEMM's
        // workgroup memory and accumulator registers, and GPUs run f16 at up to twice the
        // f32 rate. Software adapters emulate f16 at no gain, so there it is asked for
        // (`WEDGE_GPU_F16=1`, `set_f16`) rather than assumed.
        let f16 = AtomicBool::new(summary.shader_f16 && env_switch("WEDGE_GPU_F16").unwrap_or(!software));
        Ok(GpuContext {
            device,
            queue,
            summary,
            tuning,
            limits,
            layouts,
            pipelines: Mutex::new(HashMap::new()),
            dummy,
            health,
            tiled_gemm,
            subgroups,
            f16,
        })
    }

    /// Makes every run on this context fail or hang (`None` clears it; a hung run then goes
    /// on). For tests of what serves on top; not in normal builds.
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&self, fault: Option<crate::Fault>) {
        self.health.inject(fault, 0);
    }

    /// [`GpuContext::inject_fault`] after `runs` more runs went well (a fault in the middle of
    /// a generation, at a known step).
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault_after(&self, runs: u64, fault: crate::Fault) {
        self.health.inject(Some(fault), runs);
    }

    /// What adapter this is.
    pub fn summary(&self) -> &AdapterSummary {
        &self.summary
    }

    /// The wgpu device and queue, for applications that share them.
    pub fn device_queue(&self) -> (&wgpu::Device, &wgpu::Queue) {
        (&self.device, &self.queue)
    }

    /// Whether plans prepared from now on use the tiled GEMM for many-row matmuls (the
    /// default) or the barrier-free row-block kernel. Both give the same results; tests
    /// exercise both.
    pub fn set_tiled_gemm(&self, on: bool) {
        self.tiled_gemm.store(on, Ordering::Relaxed);
    }

    pub(crate) fn tiled_gemm(&self) -> bool {
        self.tiled_gemm.load(Ordering::Relaxed)
    }

    /// Whether plans prepared from now on use the subgroup GEMV for one to four rows
    /// (the default where the device has subgroups; `WEDGE_GPU_SUBGROUPS=0` turns it
    /// off) or the workgroup-memory one. Without subgroups on the device this stays off.
    /// Returns whether it is on.
    pub fn set_subgroups(&self, on: bool) -> bool {
        let on = on && self.summary.subgroups;
        self.subgroups.store(on, Ordering::Relaxed);
        on
    }

    /// Whether the subgroup GEMV is in use.
    pub fn subgroups(&self) -> bool {
        self.subgroups.load(Ordering::Relaxed)
    }

    /// Whether plans prepared from now on compute many-row matmuls in f16 (`gemm_h`: x and
    /// the weights rounded to f16 in the tiles, each 16-long chunk of the reduction summed
    /// in f16, the chunks in f32) or in f32. The default is on for hardware adapters with
    /// `shader-f16` and off for software ones; `WEDGE_GPU_F16=0|1` sets it. Without
    /// `shader-f16` on the device this stays off. Returns whether it is on. `q8a8` matmuls
    /// and the GEMV (up to four rows, bound by weight reads) keep their kernels.
    pub fn set_f16(&self, on: bool) -> bool {
        let on = on && self.summary.shader_f16;
        self.f16.store(on, Ordering::Relaxed);
        on
    }

    /// Whether the f16 GEMM is in use.
    pub fn f16(&self) -> bool {
        self.f16.load(Ordering::Relaxed)
    }

    /// Number of pipelines built so far.
    pub fn pipelines_built(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub(crate) fn bind_group_layout(&self, f: Family) -> &wgpu::BindGroupLayout {
        &self.layouts[&f].bgl
    }

    /// The pipeline for `key`, built on first use inside an error scope.
    pub(crate) async fn pipeline(&self, key: &KernelKey) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        if let Some(p) = self.pipelines.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(p);
        }
        let label = key.label();
        // browsers (Tint) want every extension enabled in the source; naga rejects
        // `enable subgroups;` (a source that naga needs enabled, f16, carries its directive)
        let src = if cfg!(target_arch = "wasm32") { key.source_with_enables() } else { key.source() }
            .map_err(|e| GpuError::Pipeline { key: label.clone(), message: e.to_string() })?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let constants: Vec<(&str, f64)> = key.overrides.clone();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&self.layouts[&key.family].pipeline_layout),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                // every kernel writes workgroup memory before it reads it
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(err) = scope.pop().await {
            return Err(GpuError::Pipeline { key: label, message: err.to_string() });
        }
        let p = Arc::new(pipeline);
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(key.clone(), p.clone());
        }
        Ok(p)
    }
}

/// A kernel switch from the environment (`WEDGE_GPU_SUBGROUPS`, `WEDGE_GPU_F16`): `0` off,
/// `1` on (where the device can), anything else or unset: the default.
fn env_switch(name: &str) -> Option<bool> {
    #[cfg(not(target_arch = "wasm32"))]
    match std::env::var(name).as_deref() {
        Ok("0") => return Some(false),
        Ok("1") => return Some(true),
        _ => {}
    }
    let _ = name;
    None
}

#[cfg(not(target_arch = "wasm32"))]
async fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter, GpuError> {
    let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
    adapters
        .into_iter()
        .min_by_key(|a| {
            let i = a.get_info();
            // prefer Vulkan/Metal/DX12 over GL at equal rank
            (rank(i.device_type), u32::from(i.backend == wgpu::Backend::Gl))
        })
        .ok_or_else(|| GpuError::NoAdapter("no adapter found (is a Vulkan, Metal or DX12 driver installed?)".into()))
}

#[cfg(target_arch = "wasm32")]
async fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter, GpuError> {
    let _ = rank;
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        // wgpu's text lists every backend compiled out of a wasm build; say what happened
        .map_err(|_| GpuError::NoAdapter("the browser offers no WebGPU adapter".into()))
}

fn tune(s: &AdapterSummary, limits: &wgpu::Limits) -> Tuning {
    let inv = limits.max_compute_invocations_per_workgroup.min(limits.max_compute_workgroup_size_x);
    let big = inv >= 256;
    let (gemv_wg, gemv_tpr) = if s.software {
        // On CPU-emulated devices a column per invocation is fastest (no cross-lane reduction).
        (64, 1)
    } else if big {
        (256, 32)
    } else {
        (64, 8)
    };
    let gemm_ts = if limits.max_compute_invocations_per_workgroup >= 256 && limits.max_compute_workgroup_size_y >= 16 {
        16
    } else {
        8
    };
    Tuning { gemv_wg, gemv_tpr, gemm_ts, wg: if big { 256 } else { 64 }, attention_wg: 64 }
}

fn family_layout(device: &wgpu::Device, f: Family) -> FamilyLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = f
        .bindings()
        .iter()
        .enumerate()
        .map(|(i, kind)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match kind {
                    BindingKind::StorageRead => wgpu::BufferBindingType::Storage { read_only: true },
                    BindingKind::StorageReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    BindingKind::Uniform => wgpu::BufferBindingType::Uniform,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let label = format!("wedge.{f}");
    let bgl =
        device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&bgl)],
        immediate_size: 0,
    });
    FamilyLayout { bgl, pipeline_layout }
}
