//! Semantic search as a desktop app would embed it: load the bundled model, embed a
//! few documents once, then rank them against a query by cosine similarity.
//!
//! `cargo run --release -p semantic-search -- "how do I get my money back?"`

use anyhow::Result;

const DOCS: [&str; 6] = [
    "Refunds are issued to the original payment method within five working days.",
    "Our support team is available by chat from 8am to 8pm, Monday to Saturday.",
    "Orders over 50 euros ship for free within the European Union.",
    "You can change the delivery address until the parcel has left the warehouse.",
    "The warranty covers manufacturing defects for two years after purchase.",
    "Gift cards cannot be exchanged for cash.",
];

fn main() -> Result<()> {
    let query = std::env::args().nth(1).unwrap_or_else(|| "how do I get my money back?".into());
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/all-MiniLM-L6-v2.wedge");
    let device = wedge::Device::auto(); // a hardware GPU if there is one, else the CPU
    let embedder = wedge::Embedder::from_bytes(&std::fs::read(model)?, &device)?;

    let docs = embedder.embed(&DOCS)?;
    let q = &embedder.embed(&[query.as_str()])?[0];
    // embeddings are L2-normalized: the dot product is the cosine similarity
    let mut ranked: Vec<(f32, &str)> =
        docs.iter().zip(DOCS).map(|(d, text)| (d.iter().zip(q).map(|(a, b)| a * b).sum(), text)).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));

    println!("query: {query}   (device: {})", device.describe());
    for (score, text) in ranked {
        println!("{score:.3}  {text}");
    }
    Ok(())
}
