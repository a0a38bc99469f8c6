//! Hot reload: a `notify` watcher on the folders of the served model files (and the models
//! folder). Events are gathered until the files have been quiet for a moment (a copy writes
//! many times), then each model whose file changed (size, time or a new file in its place)
//! is reloaded ([`ModelRegistry::reload_if_changed`]) and model files new to the models folder
//! are added. When the configuration file changes, its `[[models]]` (versions and weights
//! included) are taken again ([`ModelRegistry::update`]); other settings need a restart.
//! A reload that fails leaves the loaded version serving (the registry records the error).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::ServeError;
use crate::config::{Config, models_in};
use crate::registry::ModelRegistry;

/// How long the files must be quiet before changes are acted on.
const QUIET: Duration = Duration::from_millis(300);

/// The running watcher; dropping it stops it.
pub struct ModelWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ModelWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelWatcher").finish_non_exhaustive()
    }
}

impl ModelWatcher {
    /// Watches the models of `registry`, the folder `models_dir` and the configuration file
    /// `config_file` (whose `[[models]]` the registry serves).
    pub fn start(
        registry: Arc<ModelRegistry>,
        models_dir: Option<PathBuf>,
        config_file: Option<PathBuf>,
    ) -> Result<ModelWatcher, ServeError> {
        let err = |e: notify::Error| ServeError::Config(format!("cannot watch the model files: {e}"));
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if !e.kind.is_access() => {
                for p in e.paths {
                    let _ = tx.send(p);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("model file watcher: {e}"),
        })
        .map_err(err)?;
        let mut folders: HashSet<PathBuf> = registry.slots().iter().filter_map(|s| folder_of(&s.config.path)).collect();
        folders.extend(models_dir.clone());
        folders.extend(config_file.as_deref().and_then(folder_of));
        for f in &folders {
            watcher.watch(f, RecursiveMode::NonRecursive).map_err(err)?;
        }
        let thread = std::thread::Builder::new()
            .name("wedge-model-watch".into())
            .spawn(move || run(&registry, models_dir.as_deref(), config_file.as_deref(), &rx))
            .map_err(|e| ServeError::Config(format!("cannot start the watcher thread: {e}")))?;
        tracing::info!(folders = folders.len(), "watching model files");
        Ok(ModelWatcher { watcher: Some(watcher), thread: Some(thread) })
    }
}

impl Drop for ModelWatcher {
    fn drop(&mut self) {
        drop(self.watcher.take()); // closes the channel: the thread ends
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The folder a model file sits in (made absolute, as the watcher reports paths).
fn folder_of(path: &Path) -> Option<PathBuf> {
    std::path::absolute(path).ok()?.parent().map(Path::to_path_buf)
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::path::absolute(a).ok() == std::path::absolute(b).ok()
}

fn run(registry: &ModelRegistry, models_dir: Option<&Path>, config_file: Option<&Path>, rx: &mpsc::Receiver<PathBuf>) {
    while let Ok(first) = rx.recv() {
        let mut changed: HashSet<PathBuf> = HashSet::from([first]);
        while let Ok(p) = rx.recv_timeout(QUIET) {
            changed.insert(p);
        }
        if let Some(path) = config_file
            && changed.iter().any(|p| same_file(p, path))
        {
            let taken = Config::load(path).and_then(|c| {
                c.validate()?;
                let folder = match models_dir {
                    Some(d) => models_in(d)?,
                    None => Vec::new(),
                };
                registry.update(&c.models, &folder);
                Ok(())
            });
            match taken {
                Ok(()) => tracing::info!(config = %path.display(), "models of the changed configuration taken"),
                Err(e) => {
                    tracing::error!(config = %path.display(), error = %e, "changed configuration refused; serving on")
                }
            }
        }
        for slot in registry.slots() {
            if !changed.iter().any(|p| same_file(p, &slot.config.path)) {
                continue;
            }
            match registry.reload_if_changed(&slot) {
                Ok(true) => tracing::info!(model = %slot.config.name, "reloaded after its file changed"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(model = %slot.config.name, error = %e, "reload failed; the loaded version serves on")
                }
            }
        }
        let Some(dir) = models_dir else { continue };
        let new_files = changed.iter().any(|p| folder_of(p).is_some_and(|f| same_file(&f, dir)));
        if !new_files {
            continue;
        }
        match models_in(dir) {
            Ok(found) => {
                for config in found {
                    let name = config.name.clone();
                    if registry.entry(&name).is_none() && registry.add(config) {
                        tracing::info!(model = %name, "new model in the models folder");
                    }
                }
            }
            Err(e) => tracing::warn!("models folder: {e}"),
        }
    }
}
