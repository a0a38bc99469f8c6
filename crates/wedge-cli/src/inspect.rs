//! `wedge inspect`: what a model file holds, for a `.wedge` package or a GGUF file.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use wedge_core::gguf::{Gguf, Value};
use wedge_core::package::{PackageLimits, read_header, verify_sections};
use wedge_core::quant::rows_cols;

/// `wedge inspect`: a `.wedge` package or a GGUF file, told apart by their magic bytes, or a
/// Hugging Face folder, shown as the package `wedge convert` would make of it (tensors kept; an
/// encoder's in f32).
pub(crate) fn inspect(path: &Path, json: bool) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if path.is_dir() {
        let pkg = if wedge_import::is_hf_decoder(path) {
            wedge_import::import_hf_decoder(path, wedge_import::DecoderQuant::Keep)?
        } else {
            let opts = wedge_import::ImportOptions::uniform(wedge_core::Format::F32);
            wedge_import::import_hf_folder(path, &opts, &mut |_, _, _| {})?
        };
        if !json {
            writeln!(out, "(a Hugging Face folder, imported in memory as `wedge convert` would)")?;
        }
        let (bytes, _) = pkg.to_bytes(3)?;
        return wedge(path, &bytes, json, &mut out);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(b"GGUF") {
        return gguf(path, &bytes, json, &mut out);
    }
    wedge(path, &bytes, json, &mut out)
}

fn wedge(path: &Path, bytes: &[u8], json: bool, out: &mut impl Write) -> Result<()> {
    let parsed = read_header(bytes, &PackageLimits::default())?;
    // (every section, as loading would read it: a damaged file is refused here too)
    verify_sections(bytes, &parsed).with_context(|| format!("{} is damaged", path.display()))?;
    let h = &parsed.header;
    let mut params = 0u64;
    let mut stored = 0u64;
    let mut packed = 0u64;
    let mut tensors = Vec::new();
    for t in &h.tensors {
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let (r, c) = rows_cols(&shape).unwrap_or((0, 0));
        let n = (r * c) as u64;
        params += n;
        stored += t.stored_len;
        packed += t.raw_len;
        tensors.push(serde_json::json!({
            "name": t.name, "format": t.format.to_string(), "shape": t.shape,
            "params": n, "stored_bytes": t.stored_len, "packed_bytes": t.raw_len,
            "f32_bytes": 4 * n, "crc32": format!("{:08x}", t.crc32),
        }));
    }
    let f32_bytes = 4 * params;
    if json {
        let v = serde_json::json!({
            "file": path.display().to_string(), "file_bytes": bytes.len(), "format_version": wedge_core::package::VERSION,
            "digest": parsed.digest, "architecture": h.architecture, "config": h.config, "metadata": h.metadata,
            "parameters": params, "stored_bytes": stored, "packed_bytes": packed, "f32_bytes": f32_bytes,
            "tensors": tensors,
            "assets": h.assets.iter().map(|a| serde_json::json!({"name": a.name, "bytes": a.raw_len, "crc32": format!("{:08x}", a.crc32)})).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        out.flush()?;
        return Ok(());
    }
    writeln!(out, "file          {} ({} bytes)", path.display(), bytes.len())?;
    writeln!(out, "format        .wedge v{}", wedge_core::package::VERSION)?;
    writeln!(out, "digest        {}", parsed.digest)?;
    writeln!(out, "architecture  {}", h.architecture)?;
    for (k, v) in &h.metadata {
        writeln!(out, "{:<13} {v}", k)?;
    }
    writeln!(out, "parameters    {params}")?;
    writeln!(
        out,
        "size          {:.2} MB on disk, {:.2} MB packed, {:.2} MB as f32 ({:.2}x smaller)",
        stored as f64 / 1e6,
        packed as f64 / 1e6,
        f32_bytes as f64 / 1e6,
        f32_bytes as f64 / stored.max(1) as f64
    )?;
    for a in &h.assets {
        writeln!(out, "asset         {} ({} bytes)", a.name, a.raw_len)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<56} {:<8} {:<16} {:>12} {:>12} {:>8}",
        "tensor", "format", "shape", "on disk", "as f32", "crc32"
    )?;
    for t in &h.tensors {
        let n: u64 = t.shape.iter().product();
        writeln!(
            out,
            "{:<56} {:<8} {:<16} {:>12} {:>12} {:>08x}",
            t.name,
            t.format.to_string(),
            format!("{:?}", t.shape),
            t.stored_len,
            4 * n,
            t.crc32
        )?;
    }
    out.flush()?;
    Ok(())
}

/// A GGUF file's metadata (long arrays shown by their length and first items) and tensor table.
fn gguf(path: &Path, bytes: &[u8], json: bool, out: &mut impl Write) -> Result<()> {
    let g = Gguf::parse(bytes).with_context(|| format!("reading {}", path.display()))?;
    let params: u64 = g.tensors.iter().map(|t| t.len()).sum();
    let data: u64 = g.tensors.iter().map(|t| t.size).sum();
    let mut types = std::collections::BTreeMap::<&str, (usize, u64)>::new();
    for t in &g.tensors {
        let e = types.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    if json {
        let v = serde_json::json!({
            "file": path.display().to_string(), "file_bytes": bytes.len(), "format": "gguf", "gguf_version": g.version,
            "alignment": g.alignment, "data_offset": g.data_offset, "parameters": params, "tensor_bytes": data,
            "metadata": g.metadata.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>(),
            "tensors": g.tensors.iter().map(|t| serde_json::json!({
                "name": t.name, "type": t.ty.name(), "shape": t.shape(), "params": t.len(), "bytes": t.size,
                "offset": g.data_offset + t.offset,
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        out.flush()?;
        return Ok(());
    }
    writeln!(out, "file          {} ({} bytes)", path.display(), bytes.len())?;
    writeln!(out, "format        GGUF v{} (alignment {})", g.version, g.alignment)?;
    writeln!(out, "parameters    {params}")?;
    let mix: Vec<String> = types.iter().map(|(t, (n, b))| format!("{n} {t} ({:.2} MB)", *b as f64 / 1e6)).collect();
    writeln!(out, "tensors       {} in {:.2} MB: {}", g.tensors.len(), data as f64 / 1e6, mix.join(", "))?;
    writeln!(out)?;
    for (k, v) in &g.metadata {
        writeln!(out, "{k:<40} {}", shown(v))?;
    }
    writeln!(out)?;
    writeln!(out, "{:<40} {:<6} {:<16} {:>12}", "tensor", "type", "shape", "bytes")?;
    for t in &g.tensors {
        writeln!(out, "{:<40} {:<6} {:<16} {:>12}", t.name, t.ty.name(), format!("{:?}", t.shape()), t.size)?;
    }
    out.flush()?;
    Ok(())
}

/// A metadata value on one line: strings up to a screen's width, arrays by their length and
/// first elements (a tokenizer's vocabulary is an array of 49152 strings).
fn shown(v: &Value) -> String {
    const WIDTH: usize = 100;
    let mut s = match v {
        Value::Array(a) => {
            let json = a.to_json();
            let items: Vec<String> = json.as_array().into_iter().flatten().take(4).map(|x| x.to_string()).collect();
            format!("[{} {}: {}{}]", a.len(), a.type_name(), items.join(", "), if a.len() > 4 { ", ..." } else { "" })
        }
        other => other.to_json().to_string(),
    };
    if s.chars().count() > WIDTH {
        s = s.chars().take(WIDTH).collect::<String>() + "...";
    }
    s
}
