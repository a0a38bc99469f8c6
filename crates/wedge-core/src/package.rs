//! The `.wedge` package format, version 1.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  b"\x89WEDGE\r\n"
//! 8       4     format version, u32 LE (1)
//! 12      4     flags, u32 LE (0)
//! 16      8     header length H, u64 LE
//! 24      32    SHA-256 of the header bytes
//! 56      H     header: UTF-8 JSON (`Header`)
//! 56+H    ...   data: one zstd frame per tensor and per asset, at the offsets the header gives
//! ```
//!
//! Each tensor entry carries its format, shape, the offset and length of its
//! stored (compressed) section, its raw length and a CRC-32 of the stored bytes.
//! The raw bytes are the packed value words followed by the scale words
//! ([`crate::quant`]), little-endian. Assets (the tokenizer, pooling config)
//! are stored the same way.
//!
//! The reader checks the magic, the version, the header length against the file
//! and the limits, the header checksum, and then every entry (format, rank,
//! shape overflow, raw length against what format and shape require, section
//! bounds, totals) before it decompresses anything. Decompression grows its
//! buffer only as real output arrives and stops one byte past the declared
//! length, so no allocation is ever sized by a header field alone.
//! The package digest is the hex SHA-256 of the header, which covers every
//! tensor's checksum.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::quant::{Format, Weight, rows_cols};

/// File magic.
pub const MAGIC: [u8; 8] = *b"\x89WEDGE\r\n";
/// The format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Size of the fixed prefix before the header.
pub const PREFIX_LEN: usize = 56;

/// Bounds the reader enforces on a package.
#[derive(Clone, Copy, Debug)]
pub struct PackageLimits {
    /// Largest header.
    pub max_header_bytes: u64,
    /// Most tensors plus assets.
    pub max_entries: usize,
    /// Largest rank of a tensor.
    pub max_rank: usize,
    /// Largest raw (decompressed) size of one entry.
    pub max_entry_bytes: u64,
    /// Largest raw size of all entries together.
    pub max_total_bytes: u64,
}

impl Default for PackageLimits {
    fn default() -> Self {
        PackageLimits {
            max_header_bytes: 16 << 20,
            max_entries: 65_536,
            max_rank: 8,
            max_entry_bytes: 4 << 30,
            max_total_bytes: 16 << 30,
        }
    }
}

/// Where a tensor lives in the data area and what it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Name.
    pub name: String,
    /// Logical shape.
    pub shape: Vec<u64>,
    /// Storage format.
    pub format: Format,
    /// Offset of the stored section from the start of the data area.
    pub offset: u64,
    /// Stored (compressed) length.
    pub stored_len: u64,
    /// Raw (decompressed) length.
    pub raw_len: u64,
    /// CRC-32 of the stored bytes.
    pub crc32: u32,
}

/// A named byte blob in the package (tokenizer, configs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssetEntry {
    /// Name, e.g. `tokenizer.json`.
    pub name: String,
    /// Offset of the stored section from the start of the data area.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u64,
    /// Raw length.
    pub raw_len: u64,
    /// CRC-32 of the stored bytes.
    pub crc32: u32,
}

/// The serde header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Architecture name (`bert-encoder`, `llama-decoder`).
    pub architecture: String,
    /// Architecture configuration.
    pub config: serde_json::Value,
    /// Free-form metadata (source, licence, converter version).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Tensor table.
    pub tensors: Vec<TensorEntry>,
    /// Asset table.
    #[serde(default)]
    pub assets: Vec<AssetEntry>,
}

/// A whole package in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Package {
    /// Architecture name.
    pub architecture: String,
    /// Architecture configuration.
    pub config: serde_json::Value,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Weights.
    pub tensors: Vec<Weight>,
    /// Assets by name.
    pub assets: BTreeMap<String, Vec<u8>>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Package(msg.into())
}

/// A parsed, validated header and where the data area starts.
#[derive(Clone, Debug)]
pub struct ParsedHeader {
    /// The header.
    pub header: Header,
    /// Hex SHA-256 of the header bytes: the package digest.
    pub digest: String,
    /// Offset of the data area in the file.
    pub data_offset: usize,
    /// Stored size of the header.
    pub header_len: usize,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and validates the prefix and header of a package without touching tensor data.
pub fn read_header(bytes: &[u8], limits: &PackageLimits) -> Result<ParsedHeader> {
    read_header_of(bytes, bytes.len() as u64, limits)
}

/// [`read_header`] of a package file without reading its data: `head` is the file's start
/// (at least the prefix and the header), `file_len` its whole length. [`header_len`] says how
/// much of the file `head` needs.
pub fn read_header_of(head: &[u8], file_len: u64, limits: &PackageLimits) -> Result<ParsedHeader> {
    let bytes = head;
    if bytes.len() < PREFIX_LEN {
        return Err(bad(format!("truncated: {} bytes, the fixed prefix alone is {PREFIX_LEN}", bytes.len())));
    }
    if bytes[..8] != MAGIC {
        return Err(bad("not a .wedge file (bad magic)"));
    }
    let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let version = u32_at(8);
    if version != VERSION {
        return Err(bad(format!("format version {version} is not supported (this reader reads {VERSION})")));
    }
    let flags = u32_at(12);
    if flags != 0 {
        return Err(bad(format!("unknown flags {flags:#x}")));
    }
    let mut hl = [0u8; 8];
    hl.copy_from_slice(&bytes[16..24]);
    let header_len = u64::from_le_bytes(hl);
    if header_len > limits.max_header_bytes {
        return Err(bad(format!("header length {header_len} exceeds the limit of {} bytes", limits.max_header_bytes)));
    }
    let available = (bytes.len() - PREFIX_LEN) as u64;
    if header_len > available {
        let what = if file_len > bytes.len() as u64 { "read" } else { "follow" };
        return Err(bad(format!("truncated: header length {header_len}, only {available} bytes {what}")));
    }
    let header_len = header_len as usize;
    let header_bytes = &bytes[PREFIX_LEN..PREFIX_LEN + header_len];
    let digest = Sha256::digest(header_bytes);
    if digest[..] != bytes[24..56] {
        return Err(bad("header checksum mismatch (corrupt header)"));
    }
    let header: Header = serde_json::from_slice(header_bytes).map_err(|e| bad(format!("header is not valid: {e}")))?;
    let data_offset = PREFIX_LEN + header_len;
    let data_len = file_len.saturating_sub(data_offset as u64);
    validate_header(&header, data_len, limits)?;
    Ok(ParsedHeader { header, digest: hex(&digest), data_offset, header_len })
}

/// The bytes of a package's start that hold its prefix and header, from the prefix alone
/// (`None` if `prefix` is not a package's, or its header is over `limits`).
pub fn header_len(prefix: &[u8], limits: &PackageLimits) -> Option<usize> {
    if prefix.len() < PREFIX_LEN || prefix[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(prefix[16..24].try_into().ok()?);
    (len <= limits.max_header_bytes).then(|| PREFIX_LEN + len as usize)
}

fn check_section(what: &str, offset: u64, stored: u64, raw: u64, data_len: u64, limits: &PackageLimits) -> Result<()> {
    let end = offset.checked_add(stored).ok_or_else(|| bad(format!("{what}: offset + length overflows")))?;
    if end > data_len {
        return Err(bad(format!(
            "{what}: section {offset}..{end} runs past the end of the data ({data_len} bytes; truncated file?)"
        )));
    }
    if raw > limits.max_entry_bytes {
        return Err(bad(format!("{what}: raw length {raw} exceeds the limit of {}", limits.max_entry_bytes)));
    }
    Ok(())
}

fn validate_header(h: &Header, data_len: u64, limits: &PackageLimits) -> Result<()> {
    if h.tensors.len() + h.assets.len() > limits.max_entries {
        return Err(bad(format!(
            "{} entries exceed the limit of {}",
            h.tensors.len() + h.assets.len(),
            limits.max_entries
        )));
    }
    let mut names = HashSet::new();
    let mut total = 0u64;
    for t in &h.tensors {
        let what = format!("tensor `{}`", t.name);
        if !names.insert(("t", t.name.as_str())) {
            return Err(bad(format!("{what} appears twice")));
        }
        t.format.validate().map_err(|m| bad(format!("{what}: {m}")))?;
        if t.shape.is_empty() || t.shape.len() > limits.max_rank {
            return Err(bad(format!("{what}: rank {} is outside 1..={}", t.shape.len(), limits.max_rank)));
        }
        let shape: Vec<usize> = t
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("{what}: dimension {d} is too large"))))
            .collect::<Result<_>>()?;
        let (rows, cols) = rows_cols(&shape).ok_or_else(|| bad(format!("{what}: shape {shape:?} overflows")))?;
        let (w, s) =
            t.format.packed_words(rows, cols).ok_or_else(|| bad(format!("{what}: shape {shape:?} overflows")))?;
        let want = (w as u64).checked_add(s as u64).and_then(|n| n.checked_mul(4));
        if want != Some(t.raw_len) {
            return Err(bad(format!(
                "{what}: {} {shape:?} needs {} raw bytes, header says {}",
                t.format,
                want.map_or("an overflowing number of".to_string(), |n| n.to_string()),
                t.raw_len
            )));
        }
        check_section(&what, t.offset, t.stored_len, t.raw_len, data_len, limits)?;
        total = total.saturating_add(t.raw_len);
    }
    for a in &h.assets {
        let what = format!("asset `{}`", a.name);
        if !names.insert(("a", a.name.as_str())) {
            return Err(bad(format!("{what} appears twice")));
        }
        check_section(&what, a.offset, a.stored_len, a.raw_len, data_len, limits)?;
        total = total.saturating_add(a.raw_len);
    }
    if total > limits.max_total_bytes {
        return Err(bad(format!("entries total {total} raw bytes, over the limit of {}", limits.max_total_bytes)));
    }
    Ok(())
}

/// Checks every tensor's and asset's section of the package whose header is `parsed` (as
/// [`read_header`] gave it for `bytes`): its CRC-32, and that it decompresses to the size the
/// header says, as loading would. The error names every damaged section (the first ten).
pub fn verify_sections(bytes: &[u8], parsed: &ParsedHeader) -> Result<()> {
    let data = &bytes[parsed.data_offset..];
    let h = &parsed.header;
    let tensors =
        h.tensors.iter().map(|t| (format!("tensor `{}`", t.name), t.offset, t.stored_len, t.raw_len, t.crc32));
    let assets = h.assets.iter().map(|a| (format!("asset `{}`", a.name), a.offset, a.stored_len, a.raw_len, a.crc32));
    let damaged: Vec<String> = tensors
        .chain(assets)
        .filter_map(|(what, offset, stored, raw, crc)| inflate(&what, data, offset, stored, raw, crc).err())
        .map(|e| match e {
            Error::Package(m) => m,
            other => other.to_string(),
        })
        .collect();
    match damaged.as_slice() {
        [] => Ok(()),
        [one] => Err(bad(one.clone())),
        many => {
            let shown = many.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
            let more = if many.len() > 10 { format!(" and {} more", many.len() - 10) } else { String::new() };
            Err(bad(format!("{} damaged sections: {shown}{more}", many.len())))
        }
    }
}

/// Checks a section's CRC and decompresses it to exactly `raw_len` bytes.
fn inflate(what: &str, data: &[u8], offset: u64, stored_len: u64, raw_len: u64, crc: u32) -> Result<Vec<u8>> {
    // (validate_header checked the bounds against the file the header came with)
    let section = usize::try_from(offset).ok().zip(usize::try_from(stored_len).ok());
    let stored = section
        .and_then(|(start, len)| data.get(start..start.checked_add(len)?))
        .ok_or_else(|| bad(format!("{what}: section runs past the end of the data")))?;
    if crc32fast::hash(stored) != crc {
        return Err(bad(format!("{what}: checksum mismatch (corrupt data)")));
    }
    let decoder =
        ruzstd::decoding::StreamingDecoder::new(stored).map_err(|e| bad(format!("{what}: bad zstd frame: {e}")))?;
    let mut out = Vec::new();
    decoder.take(raw_len + 1).read_to_end(&mut out).map_err(|e| bad(format!("{what}: decompression failed: {e}")))?;
    if out.len() as u64 != raw_len {
        return Err(bad(format!("{what}: decompressed to {} bytes, header says {raw_len}", out.len())));
    }
    Ok(out)
}

fn words_of(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

impl Package {
    /// Reads a whole package from bytes with the default limits.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Package, String)> {
        Package::from_bytes_with(bytes, &PackageLimits::default())
    }

    /// Reads a whole package, validating it against `limits`. Returns it with its digest.
    pub fn from_bytes_with(bytes: &[u8], limits: &PackageLimits) -> Result<(Package, String)> {
        Package::from_parsed(bytes, read_header(bytes, limits)?)
    }

    /// Reads a whole package whose header [`read_header`] has parsed and validated already
    /// (`parsed`, from these `bytes`): a loader that looked at the header first does not parse
    /// it again. Returns the package with its digest.
    pub fn from_parsed(bytes: &[u8], parsed: ParsedHeader) -> Result<(Package, String)> {
        let data = bytes.get(parsed.data_offset..).ok_or_else(|| bad("truncated: the data area is missing"))?;
        let h = parsed.header;
        let mut tensors = Vec::with_capacity(h.tensors.len());
        for t in &h.tensors {
            let what = format!("tensor `{}`", t.name);
            let raw = inflate(&what, data, t.offset, t.stored_len, t.raw_len, t.crc32)?;
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            let (rows, cols) = rows_cols(&shape).unwrap_or((0, 0));
            let (nw, _) = t.format.packed_words(rows, cols).unwrap_or((0, 0));
            let mut words = words_of(&raw);
            let scales = words.split_off(nw.min(words.len()));
            tensors.push(Weight::from_packed(&t.name, &shape, t.format, words, scales)?);
        }
        let mut assets = BTreeMap::new();
        for a in &h.assets {
            let what = format!("asset `{}`", a.name);
            assets.insert(a.name.clone(), inflate(&what, data, a.offset, a.stored_len, a.raw_len, a.crc32)?);
        }
        let pkg = Package { architecture: h.architecture, config: h.config, metadata: h.metadata, tensors, assets };
        Ok((pkg, parsed.digest))
    }

    /// Looks a tensor up by name.
    pub fn tensor(&self, name: &str) -> Option<&Weight> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Serializes the package (zstd level `level`). Returns the bytes and the digest.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_bytes(&self, level: i32) -> Result<(Vec<u8>, String)> {
        let mut data = Vec::new();
        let mut entries = Vec::new();
        // one compression context for every section (making one costs more than a small tensor)
        let mut zstd = zstd::bulk::Compressor::new(level)?;
        let mut put = |raw: &[u8]| -> Result<(u64, u64, u32)> {
            let z = zstd.compress(raw)?;
            let off = data.len() as u64;
            data.extend_from_slice(&z);
            Ok((off, z.len() as u64, crc32fast::hash(&z)))
        };
        for t in &self.tensors {
            t.validate()?;
            let mut raw = Vec::with_capacity(t.packed_bytes());
            for w in t.words.iter().chain(&t.scales) {
                raw.extend_from_slice(&w.to_le_bytes());
            }
            let (offset, stored_len, crc32) = put(&raw)?;
            entries.push(TensorEntry {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                format: t.format,
                offset,
                stored_len,
                raw_len: raw.len() as u64,
                crc32,
            });
        }
        let mut assets = Vec::new();
        for (name, raw) in &self.assets {
            let (offset, stored_len, crc32) = put(raw)?;
            assets.push(AssetEntry { name: name.clone(), offset, stored_len, raw_len: raw.len() as u64, crc32 });
        }
        let header = Header {
            architecture: self.architecture.clone(),
            config: self.config.clone(),
            metadata: self.metadata.clone(),
            tensors: entries,
            assets,
        };
        let hb = serde_json::to_vec(&header).map_err(|e| bad(format!("cannot encode header: {e}")))?;
        Ok(assemble(&hb, &data))
    }
}

/// Lays out prefix, header and data; returns the bytes and the digest.
pub fn assemble(header: &[u8], data: &[u8]) -> (Vec<u8>, String) {
    let digest = Sha256::digest(header);
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len() + data.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&digest);
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    (out, hex(&digest))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn sample() -> Package {
        let mut rng = StdRng::seed_from_u64(7);
        let v: Vec<f32> = (0..8 * 40).map(|_| rng.random_range(-1.0..1.0)).collect();
        let tensors = vec![
            Weight::quantize("a", &[8, 40], &v, Format::Q4 { group: 32 }).unwrap(),
            Weight::quantize("b", &[8, 40], &v, Format::Q8).unwrap(),
            Weight::quantize("c", &[40], &v[..40], Format::F16).unwrap(),
            Weight::quantize("d", &[2, 4, 40], &v, Format::Q4_1 { group: 32 }).unwrap(),
        ];
        let mut assets = BTreeMap::new();
        assets.insert("tokenizer.json".to_string(), b"{\"model\":{}}".to_vec());
        Package {
            architecture: "test".into(),
            config: serde_json::json!({"hidden": 40}),
            metadata: BTreeMap::from([("source".to_string(), "unit test".to_string())]),
            tensors,
            assets,
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let (bytes, digest) = p.to_bytes(3).unwrap();
        let (q, d2) = Package::from_bytes(&bytes).unwrap();
        assert_eq!(p, q);
        assert_eq!(digest, d2);
        assert_eq!(digest.len(), 64);
    }

    #[test]
    fn a_header_reads_from_the_file_start_alone() {
        let (bytes, digest) = sample().to_bytes(3).unwrap();
        let limits = PackageLimits::default();
        let len = header_len(&bytes[..PREFIX_LEN], &limits).unwrap();
        let head = read_header_of(&bytes[..len], bytes.len() as u64, &limits).unwrap();
        assert_eq!((head.header.architecture.as_str(), head.digest.as_str()), ("test", digest.as_str()));
        assert_eq!(head.header, read_header(&bytes, &limits).unwrap().header);
        // a file shorter than its header says is still refused, by the length given
        assert!(read_header_of(&bytes[..len], len as u64 + 1, &limits).is_err());
        assert!(read_header_of(&bytes[..len - 1], bytes.len() as u64, &limits).is_err());
        assert_eq!(header_len(b"GGUF and more bytes than a prefix holds, or even more", &limits), None);
    }

    #[test]
    fn verifying_names_every_damaged_section() {
        let (mut bytes, _) = sample().to_bytes(3).unwrap();
        let parsed = read_header(&bytes, &PackageLimits::default()).unwrap();
        verify_sections(&bytes, &parsed).unwrap();
        let sections: Vec<(String, u64)> = parsed
            .header
            .tensors
            .iter()
            .map(|t| (format!("tensor `{}`", t.name), t.offset))
            .chain(parsed.header.assets.iter().map(|a| (format!("asset `{}`", a.name), a.offset)))
            .collect();
        bytes[parsed.data_offset + sections[0].1 as usize] ^= 1;
        let one = verify_sections(&bytes, &parsed).unwrap_err().to_string();
        assert!(one.contains(&sections[0].0) && one.contains("checksum"), "{one}");
        let last = sections.last().unwrap();
        bytes[parsed.data_offset + last.1 as usize] ^= 1;
        let two = verify_sections(&bytes, &parsed).unwrap_err().to_string();
        assert!(two.contains("2 damaged sections") && two.contains(&last.0), "{two}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (bytes, _) = sample().to_bytes(3).unwrap();
        for len in 0..bytes.len() {
            let err = Package::from_bytes(&bytes[..len]).expect_err("truncated package accepted");
            assert!(matches!(err, Error::Package(_)), "{len}: {err}");
        }
    }

    #[test]
    fn bit_flips_are_errors() {
        let (bytes, _) = sample().to_bytes(3).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..2000 {
            let mut b = bytes.clone();
            let i = rng.random_range(0..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
            let err = Package::from_bytes(&b).expect_err("flipped package accepted");
            assert!(matches!(err, Error::Package(_)), "byte {i}: {err}");
        }
    }

    fn resigned(h: &Header, data: &[u8]) -> Vec<u8> {
        assemble(&serde_json::to_vec(h).unwrap(), data).0
    }

    fn parts() -> (Header, Vec<u8>) {
        let (bytes, _) = sample().to_bytes(3).unwrap();
        let p = read_header(&bytes, &PackageLimits::default()).unwrap();
        (p.header, bytes[p.data_offset..].to_vec())
    }

    #[test]
    fn hostile_headers_name_the_problem() {
        let (h, data) = parts();
        let cases: Vec<(Box<dyn Fn(&mut Header)>, &str)> = vec![
            (Box::new(|h| h.tensors[0].shape = vec![u64::MAX, u64::MAX]), "overflows"),
            (Box::new(|h| h.tensors[0].shape = vec![1 << 40, 1 << 20]), "raw bytes"),
            (Box::new(|h| h.tensors[0].raw_len = 1 << 50), "raw bytes"),
            (Box::new(|h| h.tensors[0].offset = u64::MAX - 1), "overflows"),
            (Box::new(|h| h.tensors[0].offset = 1 << 30), "past the end"),
            (Box::new(|h| h.tensors[1].format = Format::Q4 { group: 7 }), "group size"),
            (Box::new(|h| h.tensors[1].format = Format::F32), "raw bytes"),
            (Box::new(|h| h.tensors[2].shape = vec![]), "rank"),
            (Box::new(|h| h.tensors[2].shape = vec![1; 9]), "rank"),
            (Box::new(|h| h.tensors[1].name = "a".into()), "twice"),
            (Box::new(|h| h.assets[0].raw_len = 1 << 40), "limit"),
        ];
        for (i, (edit, want)) in cases.iter().enumerate() {
            let mut h2 = h.clone();
            edit(&mut h2);
            let err = Package::from_bytes(&resigned(&h2, &data)).expect_err("hostile header accepted");
            assert!(err.to_string().contains(want), "case {i}: {err}");
        }
        // A raw length that matches the shape but not what the frame holds.
        let mut h2 = h.clone();
        h2.tensors[2].shape = vec![41];
        h2.tensors[2].raw_len = 84;
        let err = Package::from_bytes(&resigned(&h2, &data)).unwrap_err();
        assert!(err.to_string().contains("decompressed to"), "{err}");
        // A huge header length.
        let mut b = resigned(&h, &data);
        b[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(Package::from_bytes(&b).unwrap_err().to_string().contains("limit"));
        // Wrong version.
        let mut b = resigned(&h, &data);
        b[8] = 2;
        assert!(Package::from_bytes(&b).unwrap_err().to_string().contains("version 2"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_entry_fields_never_panic(
            idx in 0usize..4,
            shape in proptest::collection::vec(any::<u64>(), 0..10),
            small_shape in proptest::collection::vec(0u64..64, 0..4),
            use_small in any::<bool>(),
            offset in any::<u64>(),
            stored in prop_oneof![any::<u64>(), 0u64..4096],
            raw in prop_oneof![any::<u64>(), 0u64..4096],
            crc in any::<u32>(),
            group in prop_oneof![Just(32u32), Just(64), Just(0), any::<u32>()],
            kind in 0u32..6,
        ) {
            let (mut h, data) = parts();
            let t = &mut h.tensors[idx];
            t.shape = if use_small { small_shape } else { shape };
            t.offset = offset % (data.len() as u64 + 8);
            t.stored_len = stored;
            t.raw_len = raw;
            t.crc32 = crc;
            t.format = match kind { 0 => Format::F32, 1 => Format::F16, 2 => Format::Q8, 3 => Format::Q8A8, 4 => Format::Q4 { group }, _ => Format::Q4_1 { group } };
            let limits = PackageLimits { max_total_bytes: 1 << 24, max_entry_bytes: 1 << 22, ..Default::default() };
            let _ = Package::from_bytes_with(&resigned(&h, &data), &limits);
        }
    }
}
