//! Writes the fuzz targets' seed inputs into `fuzz/corpus/<target>/seed-*`: the tiny models as
//! files, a valid body per route, texts in several scripts. `cargo fuzz` grows the corpora
//! from them; run this again after a change to the fixtures.
//!
//! `cargo run -p wedge-fuzz --example seeds`

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, inputs) in wedge_fuzz::seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, bytes) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), bytes)?;
        }
        println!("{target}: {} seeds", inputs.len());
    }
    Ok(())
}
