//! The served models by name and alias. Readers take a snapshot of the whole table without a
//! lock (`arc-swap`); a change (a model added, replaced or removed) builds the next table and
//! swaps it in, so a request holds the model it looked up until it is done, whatever changes
//! meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::ServedModel;

#[derive(Debug, Default)]
struct Table {
    models: Vec<Arc<ServedModel>>,
    /// Names and aliases → index in `models`.
    by_name: HashMap<String, usize>,
}

impl Table {
    fn with(models: Vec<Arc<ServedModel>>) -> Table {
        let mut by_name = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            for n in std::iter::once(&m.name).chain(&m.aliases) {
                by_name.insert(n.clone(), i);
            }
        }
        Table { models, by_name }
    }
}

/// The served models.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    table: ArcSwap<Table>,
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> ModelRegistry {
        ModelRegistry::default()
    }

    /// The model with this name or alias.
    pub fn get(&self, name: &str) -> Option<Arc<ServedModel>> {
        let t = self.table.load();
        t.by_name.get(name).map(|&i| t.models[i].clone())
    }

    /// Every model, in the order they were added.
    pub fn all(&self) -> Vec<Arc<ServedModel>> {
        self.table.load().models.clone()
    }

    /// Adds `model`, or replaces the one of the same name (keeping its place); returns the
    /// replaced one. Requests that hold the old one finish on it.
    pub fn insert(&self, model: Arc<ServedModel>) -> Option<Arc<ServedModel>> {
        let mut old = None;
        self.table.rcu(|t| {
            let mut models = t.models.clone();
            old = match models.iter().position(|m| m.name == model.name) {
                Some(i) => Some(std::mem::replace(&mut models[i], model.clone())),
                None => {
                    models.push(model.clone());
                    None
                }
            };
            Table::with(models)
        });
        old
    }

    /// Removes the model named `name`; returns it.
    pub fn remove(&self, name: &str) -> Option<Arc<ServedModel>> {
        let mut old = None;
        self.table.rcu(|t| {
            let mut models = t.models.clone();
            old = models.iter().position(|m| m.name == name).map(|i| models.remove(i));
            Table::with(models)
        });
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BatchingConfig, GenerationConfig, ModelConfig};
    use crate::{Loader, Metrics};

    /// Lookups by name and alias; a replaced model keeps its place and stays usable by whoever
    /// holds it; a removed model is gone for new lookups only.
    #[test]
    fn models_are_swapped_whole_under_their_readers() {
        let metrics = Arc::new(Metrics::new(&mut prometheus_client::registry::Registry::default()));
        let loader = Loader::new(wedge::Device::cpu(), BatchingConfig::default(), GenerationConfig::default(), metrics);
        let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge");
        let config = |name: &str, version: &str| ModelConfig {
            name: name.into(),
            path: bundled.clone(),
            version: Some(version.into()),
            aliases: vec![format!("{name}-alias")],
            batching: None,
        };
        let models = ModelRegistry::new();
        assert!(models.get("a").is_none() && models.all().is_empty());
        assert!(models.insert(Arc::new(loader.load(&config("a", "1")).unwrap())).is_none());
        assert!(models.insert(Arc::new(loader.load(&config("b", "1")).unwrap())).is_none());
        let held = models.get("a-alias").unwrap();
        assert_eq!(held.version, "1");
        let old = models.insert(Arc::new(loader.load(&config("a", "2")).unwrap())).unwrap();
        assert!(Arc::ptr_eq(&old, &held));
        assert_eq!(models.get("a").unwrap().version, "2");
        assert_eq!(models.all().iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        // the holder of the old version still runs it
        let e = held.embedding().unwrap();
        assert_eq!(e.embedder.embed(&["still here"]).unwrap()[0].len(), e.dim);
        assert_eq!(models.remove("b").unwrap().name, "b");
        assert!(models.get("b").is_none() && models.get("b-alias").is_none() && models.remove("b").is_none());
    }
}
