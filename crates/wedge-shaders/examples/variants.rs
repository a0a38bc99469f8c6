//! Prints every registered kernel variant as JSON, with its source as a browser takes it
//! (`enable` directives in front): one module per family and template set, the WebGPU device
//! features it needs, its entry points and override combinations. The browser tests compile
//! them all in Chromium (Tint), the compiler naga's validation does not stand in for.
//!
//! `cargo run -q -p wedge-shaders --example variants > variants.json`

use std::collections::BTreeMap;

use wedge_shaders::all_variants;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // (family, template) -> (source, device features, entry -> override combinations)
    type Module = (String, Vec<&'static str>, BTreeMap<&'static str, Vec<serde_json::Value>>);
    let mut modules: BTreeMap<String, Module> = BTreeMap::new();
    for key in all_variants() {
        let t: Vec<String> = key.template.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let name = format!("{}[{}]", key.family, t.join(","));
        let module = match modules.get_mut(&name) {
            Some(m) => m,
            None => modules.entry(name).or_insert((key.source_with_enables()?, key.family.features(), BTreeMap::new())),
        };
        let constants: serde_json::Map<String, serde_json::Value> =
            key.overrides.iter().map(|(k, v)| ((*k).to_string(), serde_json::json!(v))).collect();
        module.2.entry(key.entry).or_default().push(serde_json::Value::Object(constants));
    }
    let out: Vec<serde_json::Value> = modules
        .into_iter()
        .map(|(name, (source, features, entries))| {
            serde_json::json!({ "name": name, "source": source, "features": features, "entries": entries })
        })
        .collect();
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
