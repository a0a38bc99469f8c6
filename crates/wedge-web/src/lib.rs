//! wedge-web: the wasm-bindgen module behind the `web/` npm package. It loads a `.wedge`
//! sentence-embedding package onto WebGPU when the browser gives a hardware adapter (or when
//! `webgpu` is asked for by name, software adapters included), else onto the wasm CPU backend,
//! and embeds texts into `Float32Array`s. Errors reach JS as `Error`s carrying the Rust message;
//! a panic hook reports any panic on the console.
//!
//! The logic lives in [`WebEmbedder`], which also builds natively so it is tested with the rest
//! of the workspace; the `wasm32` bindings are a thin layer over it.

use wedge::{Device, Embedder};

pub mod lm;

pub use lm::WebLanguageModel;

/// Texts embedded per model run; bigger requests run in chunks so memory stays bounded.
pub const CHUNK: usize = 32;

/// Which device to load onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// A hardware WebGPU adapter, else the CPU.
    Auto,
    /// Any WebGPU adapter (software ones such as SwiftShader included); an error without one.
    WebGpu,
    /// The wasm CPU backend.
    Cpu,
}

impl DeviceRequest {
    /// Parses `auto`, `webgpu` (or `gpu`) and `cpu`.
    pub fn parse(s: &str) -> Result<DeviceRequest, String> {
        match s {
            "" | "auto" => Ok(DeviceRequest::Auto),
            "webgpu" | "gpu" => Ok(DeviceRequest::WebGpu),
            "cpu" => Ok(DeviceRequest::Cpu),
            other => Err(format!("unknown device `{other}`: use auto, webgpu or cpu")),
        }
    }
}

impl DeviceRequest {
    /// Opens the device asked for.
    pub async fn open(self) -> Result<Device, String> {
        Ok(match self {
            DeviceRequest::Cpu => Device::cpu(),
            DeviceRequest::WebGpu => Device::gpu_async().await.map_err(|e| format!("WebGPU: {e}"))?,
            DeviceRequest::Auto => Device::auto_async().await,
        })
    }
}

/// `webgpu` or `cpu`.
pub fn device_name(device: &Device) -> &'static str {
    if device.is_gpu() { "webgpu" } else { "cpu" }
}

/// The adapter's description on WebGPU; on the CPU, why `auto` did not pick a GPU, if it did not.
pub fn device_info(device: &Device) -> String {
    match device.adapter() {
        Some(a) => a.to_string(),
        None => device.fallback_reason().unwrap_or("cpu").to_string(),
    }
}

/// A sentence-embedding model loaded for the browser.
#[derive(Debug)]
pub struct WebEmbedder {
    embedder: Embedder,
    device: Device,
}

impl WebEmbedder {
    /// Opens the device and loads the package.
    pub async fn load(bytes: &[u8], request: DeviceRequest) -> Result<WebEmbedder, String> {
        let device = request.open().await?;
        let embedder = Embedder::from_bytes(bytes, &device).map_err(|e| e.to_string())?;
        Ok(WebEmbedder { embedder, device })
    }

    /// `webgpu` or `cpu`.
    pub fn device(&self) -> &'static str {
        device_name(&self.device)
    }

    /// The adapter's description on WebGPU; on the CPU, why `auto` did not pick a GPU, if it did not.
    pub fn device_info(&self) -> String {
        device_info(&self.device)
    }

    /// Embedding size.
    pub fn dim(&self) -> usize {
        self.embedder.dim()
    }

    /// The package digest (hex SHA-256 of its header).
    pub fn digest(&self) -> String {
        self.embedder.digest().unwrap_or_default().to_string()
    }

    /// Tokens per text as the model sees them (special tokens included, after truncation).
    pub fn count_tokens(&self, texts: &[String]) -> Result<Vec<u32>, String> {
        texts.iter().map(|t| self.embedder.tokenize(t).map(|t| t.ids.len() as u32).map_err(|e| e.to_string())).collect()
    }

    /// One vector per text, in order; runs at most [`CHUNK`] texts of like length at a time.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let tokens = texts.iter().map(|t| self.embedder.tokenize(t)).collect::<Result<Vec<_>, _>>();
        let tokens = tokens.map_err(|e| e.to_string())?;
        self.embedder.embed_batched_async(&tokens, CHUNK).await.map_err(|e| e.to_string())
    }
}

/// The digest of a package's header, read without loading its tensors (keys the browser cache):
/// `head` is the file's start (at least its prefix and header), `file_len` its length.
pub fn package_digest(head: &[u8], file_len: u64) -> Result<String, String> {
    package_header(head, file_len).map(|h| h.digest)
}

/// A package's prefix and header, checked, from the file's start (`head`) and length.
pub fn package_header(head: &[u8], file_len: u64) -> Result<wedge::ParsedHeader, String> {
    wedge::read_header_of(head, file_len, &wedge::PackageLimits::default()).map_err(|e| e.to_string())
}

/// The JS API (wasm32 only).
#[cfg(target_arch = "wasm32")]
pub mod bindings {
    use wasm_bindgen::prelude::*;

    use super::{DeviceRequest, WebEmbedder};

    /// The one place where errors become JS `Error`s.
    pub(crate) fn js_error(message: String) -> JsError {
        JsError::new(&message)
    }

    #[wasm_bindgen(start)]
    fn start() {
        console_error_panic_hook::set_once();
    }

    /// A loaded model (`dispose()` frees it: wasm-bindgen's `free`).
    #[wasm_bindgen]
    #[derive(Debug)]
    pub struct Model {
        inner: WebEmbedder,
    }

    /// Loads a `.wedge` package onto `device` (`auto`, `webgpu` or `cpu`).
    #[wasm_bindgen(js_name = loadModel)]
    pub async fn load_model(bytes: Vec<u8>, device: String) -> Result<Model, JsError> {
        let request = DeviceRequest::parse(&device).map_err(js_error)?;
        let inner = WebEmbedder::load(&bytes, request).await.map_err(js_error)?;
        Ok(Model { inner })
    }

    /// The start of the page's bytes that holds a package's prefix and header (only the
    /// prefix's bytes when they do not start like a package, which is all the checks then
    /// read), copied into the heap, and the file's length: the checks that read only the header
    /// copy no more.
    pub(crate) fn head(bytes: &js_sys::Uint8Array) -> (Vec<u8>, u64) {
        let len = bytes.length();
        let mut prefix = vec![0u8; wedge::PREFIX_LEN.min(len as usize)];
        bytes.subarray(0, prefix.len() as u32).copy_to(&mut prefix);
        match wedge::header_len(&prefix, &wedge::PackageLimits::default()) {
            Some(n) => (bytes.subarray(0, u32::try_from(n).unwrap_or(u32::MAX).min(len)).to_vec(), u64::from(len)),
            None => (prefix, u64::from(len)),
        }
    }

    /// The digest of a package's header (hex SHA-256), without loading it.
    #[wasm_bindgen(js_name = packageDigest)]
    pub fn package_digest(bytes: &js_sys::Uint8Array) -> Result<String, JsError> {
        let (head, len) = head(bytes);
        super::package_digest(&head, len).map_err(js_error)
    }

    #[wasm_bindgen]
    impl Model {
        /// `webgpu` or `cpu`.
        #[wasm_bindgen(getter)]
        pub fn device(&self) -> String {
            self.inner.device().to_string()
        }

        /// The adapter, or why the CPU was chosen.
        #[wasm_bindgen(getter, js_name = deviceInfo)]
        pub fn device_info(&self) -> String {
            self.inner.device_info()
        }

        /// Embedding size.
        #[wasm_bindgen(getter)]
        pub fn dim(&self) -> usize {
            self.inner.dim()
        }

        /// The package digest.
        #[wasm_bindgen(getter)]
        pub fn digest(&self) -> String {
            self.inner.digest()
        }

        /// Tokens per text (special tokens included, after truncation).
        #[wasm_bindgen(js_name = countTokens)]
        pub fn count_tokens(&self, texts: Vec<String>) -> Result<Vec<u32>, JsError> {
            self.inner.count_tokens(&texts).map_err(js_error)
        }

        /// One `Float32Array` per text, in order.
        pub async fn embed(&self, texts: Vec<String>) -> Result<js_sys::Array, JsError> {
            let vectors = self.inner.embed(&texts).await.map_err(js_error)?;
            Ok(vectors.iter().map(|v| js_sys::Float32Array::from(v.as_slice())).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!(DeviceRequest::parse("auto").unwrap(), DeviceRequest::Auto);
        assert_eq!(DeviceRequest::parse("webgpu").unwrap(), DeviceRequest::WebGpu);
        assert!(DeviceRequest::parse("tpu").unwrap_err().contains("tpu"));
    }

    #[test]
    fn embeds_in_chunks_like_the_native_path() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge");
        let bytes = std::fs::read(path).unwrap();
        let m = pollster::block_on(WebEmbedder::load(&bytes, DeviceRequest::Cpu)).unwrap();
        assert_eq!((m.device(), m.dim()), ("cpu", 384));
        assert_eq!(package_digest(&bytes, bytes.len() as u64).unwrap(), m.digest());
        let texts: Vec<String> = (0..CHUNK + 3).map(|i| format!("text number {i}")).collect();
        let got = pollster::block_on(m.embed(&texts)).unwrap();
        assert_eq!(got.len(), texts.len());
        let native = Embedder::from_bytes(&bytes, &Device::cpu()).unwrap();
        let want = native.embed(&[texts[CHUNK + 1].as_str()]).unwrap();
        let diff = got[CHUNK + 1].iter().zip(&want[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "{diff}");
        let counts = m.count_tokens(&["hello world".to_string(), "x ".repeat(1000)]).unwrap();
        assert_eq!(counts, vec![4, 256]);
        assert!(package_digest(&bytes[..100], 100).is_err());
        assert!(pollster::block_on(WebEmbedder::load(b"not a model", DeviceRequest::Cpu)).is_err());
    }
}
