//! A served model: what it does (embeddings through a batcher, generation through a
//! scheduler), its file, digest and device; and what a model file holds ([`ModelFile`]).

use std::path::PathBuf;
use std::sync::Arc;

use wedge::{Embedder, LanguageModel};

use crate::{Batcher, Scheduler, ServeError};

/// One served model.
#[derive(Debug)]
pub struct ServedModel {
    /// The name clients use.
    pub name: String,
    /// Other names.
    pub aliases: Vec<String>,
    /// The version string.
    pub version: String,
    /// The model file.
    pub path: PathBuf,
    /// The model's digest (hex SHA-256 of a package's header, or of a GGUF file); part of
    /// every cache key.
    pub digest: String,
    /// Where it runs.
    pub device: String,
    /// Seconds it took to load and warm up.
    pub load_seconds: f64,
    /// Bytes it holds while loaded: its weights (on the host or the GPU), and a language
    /// model's key/value cache.
    pub bytes: u64,
    /// The file as it was when loading began: a different one on disk is a change to reload.
    pub file_stamp: Option<FileStamp>,
    /// What it does and how it is run.
    pub kind: ModelKind,
}

/// What a served model does.
#[derive(Debug)]
pub enum ModelKind {
    /// Sentence embeddings, through the dynamic batcher.
    Embedding(EmbeddingModel),
    /// Text generation, through continuous batching.
    Language(LanguageServing),
}

/// An embedding model and its batcher.
#[derive(Debug)]
pub struct EmbeddingModel {
    /// Embedding size.
    pub dim: usize,
    /// Longest input in tokens.
    pub max_seq_length: usize,
    pub(crate) embedder: Arc<Embedder>,
    pub(crate) batcher: Batcher,
}

/// A language model and its scheduler.
#[derive(Debug)]
pub struct LanguageServing {
    pub(crate) lm: Arc<LanguageModel>,
    pub(crate) scheduler: Scheduler,
    pub(crate) default_max_tokens: usize,
}

impl LanguageServing {
    /// The model (vocabulary, chat template, configuration).
    pub fn model(&self) -> &LanguageModel {
        &self.lm
    }

    /// Its continuous-batching scheduler.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// `max_tokens` when a request gives none.
    pub fn default_max_tokens(&self) -> usize {
        self.default_max_tokens
    }
}

impl ServedModel {
    /// Its metrics label (name and version).
    pub fn label(&self) -> crate::metrics::ModelLabel {
        crate::metrics::ModelLabel::new(&self.name, &self.version)
    }

    /// `embedding` or `text-generation`.
    pub fn task(&self) -> &'static str {
        match self.kind {
            ModelKind::Embedding(_) => "embedding",
            ModelKind::Language(_) => "text-generation",
        }
    }

    /// The embedding model, or a 400 naming the routes this model serves.
    pub fn embedding(&self) -> Result<&EmbeddingModel, ServeError> {
        match &self.kind {
            ModelKind::Embedding(e) => Ok(e),
            ModelKind::Language(_) => Err(ServeError::BadInput(format!(
                "model `{}` is a language model: use /v1/chat/completions or /v1/completions",
                self.name
            ))),
        }
    }

    /// The language model, or a 400 naming the routes this model serves.
    pub fn language(&self) -> Result<&LanguageServing, ServeError> {
        match &self.kind {
            ModelKind::Language(l) => Ok(l),
            ModelKind::Embedding(_) => Err(ServeError::BadInput(format!(
                "model `{}` is an embedding model: use /v1/embeddings or /v2/models/{}/infer",
                self.name, self.name
            ))),
        }
    }

    /// Inputs (embeddings) or requests (generation) waiting.
    pub fn queued(&self) -> usize {
        match &self.kind {
            ModelKind::Embedding(e) => e.batcher.queued(),
            ModelKind::Language(l) => l.scheduler.waiting(),
        }
    }

    pub(crate) fn shutdown(&self) {
        match &self.kind {
            ModelKind::Embedding(e) => e.batcher.shutdown(),
            ModelKind::Language(l) => l.scheduler.shutdown(),
        }
    }
}

/// What a model file holds, as far as serving it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFile {
    /// A GGUF file: a language model.
    Gguf,
    /// A package of the decoder architecture: a language model.
    Decoder,
    /// Anything else: served as an embedding model, whose loading reports what is wrong with
    /// a file that is not one.
    Other,
}

impl ModelFile {
    /// Reads the file's magic (and a package's prefix and header, not its data).
    pub fn probe(path: &std::path::Path) -> std::io::Result<ModelFile> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let file_len = f.metadata()?.len();
        let mut head = Vec::with_capacity(wedge::PREFIX_LEN);
        f.by_ref().take(wedge::PREFIX_LEN as u64).read_to_end(&mut head)?;
        if head.starts_with(b"GGUF") {
            return Ok(ModelFile::Gguf);
        }
        let limits = wedge::PackageLimits::default();
        let Some(len) = wedge::header_len(&head, &limits) else { return Ok(ModelFile::Other) };
        f.take((len - head.len()) as u64).read_to_end(&mut head)?;
        let header = wedge::read_header_of(&head, file_len, &limits);
        Ok(if header.is_ok_and(|h| h.header.architecture == wedge::DECODER) {
            ModelFile::Decoder
        } else {
            ModelFile::Other
        })
    }

    /// Whether it is a language model.
    pub fn is_language(self) -> bool {
        self != ModelFile::Other
    }
}

/// What identifies a version of a file on disk without reading it: a damaged copy may keep
/// a package's header, hence its digest, so the digest alone cannot tell that it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    /// Its length.
    pub len: u64,
    /// When it was last written.
    pub modified: std::time::SystemTime,
    /// The file itself (a file renamed over the old one is another inode).
    pub inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` now.
    pub fn of(path: &std::path::Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(FileStamp { len: m.len(), modified: m.modified()?, inode })
    }
}

/// Hex SHA-256 of a file, read in pieces.
pub(crate) fn file_digest(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_files_are_told_apart_by_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge");
        assert_eq!(ModelFile::probe(&bundled).unwrap(), ModelFile::Other);
        let gguf = dir.path().join("m.gguf");
        std::fs::write(&gguf, b"GGUF\x03\0\0\0").unwrap();
        assert!(ModelFile::probe(&gguf).unwrap().is_language());
        // a decoder package: the bundled package's header says `decoder` (re-signed)
        let bytes = std::fs::read(&bundled).unwrap();
        let mut p = wedge::Package::from_bytes(&bytes).unwrap().0;
        p.architecture = wedge::DECODER.into();
        let decoder = dir.path().join("d.wedge");
        std::fs::write(&decoder, p.to_bytes(1).unwrap().0).unwrap();
        assert_eq!(ModelFile::probe(&decoder).unwrap(), ModelFile::Decoder);
        for junk in [&b""[..], b"GG", b"WEDGE\0\0\0 but nothing more"] {
            let f = dir.path().join("junk");
            std::fs::write(&f, junk).unwrap();
            assert_eq!(ModelFile::probe(&f).unwrap(), ModelFile::Other);
        }
        assert!(ModelFile::probe(&dir.path().join("missing")).is_err());
    }
}
