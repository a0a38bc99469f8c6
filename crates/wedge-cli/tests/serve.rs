//! `wedge serve` as a user runs it: the binary with the bundled model, a request over real
//! HTTP, JSON logs with request ids, SIGTERM → exit 0; and clear errors for bad configuration.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn wedge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wedge"))
}

/// One HTTP/1.1 request; returns the status line, headers and body as text.
fn http(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_answers_the_readme_curl_and_stops_cleanly_on_sigterm() {
    let mut child = wedge()
        .args([
            "serve",
            "--device",
            "cpu",
            "--addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    let mut ready = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let msg = v["fields"]["message"].as_str().unwrap_or_default().to_string();
        if let Some(a) = msg.strip_prefix("listening on http://") {
            addr = Some(a.to_string());
        }
        if msg == "model ready" {
            assert_eq!(v["fields"]["model"], "all-MiniLM-L6-v2");
            ready = true;
            break;
        }
    }
    let addr = addr.expect("no listening line");
    assert!(ready);
    let reply = http(&addr, "POST", "/v1/embeddings", r#"{"model":"all-MiniLM-L6-v2","input":["hello","edge"]}"#);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("x-wedge-cache: miss"));
    let body = &reply[reply.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 384);
    assert!(http(&addr, "GET", "/v2/health/ready", "").starts_with("HTTP/1.1 200"));

    // Each request is logged with its id.
    let logged = lines.by_ref().map(|l| l.unwrap()).find(|l| l.contains("/v1/embeddings")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&logged).unwrap();
    assert!(v["span"]["request_id"].is_string(), "{logged}");

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(lines.map(|l| l.unwrap()).any(|l| l.contains("stopped")));
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("wedge-serve-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("adr = \"x\"", "unknown field `adr`"),
        ("[[models]]\nname = \"m\"\npath = \"missing.wedge\"", "no file at"),
        ("[batching]\nmax_batch_size = 0", "max_batch_size"),
        ("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"", "certificate"),
    ];
    for (text, want) in cases {
        let path = dir.join("wedge.toml");
        std::fs::write(&path, text).unwrap();
        let out = wedge()
            .args(["serve", "--device", "cpu", "--addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: accepted");
        assert!(err.contains(want), "{text}: error does not mention `{want}`:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A package with one flipped byte in a tensor's data is refused by every command that reads
/// it, each naming the damaged tensor: `inspect` (which checks every section, not only the
/// header), `embed` and `serve`.
#[test]
fn a_damaged_model_is_refused_everywhere_naming_the_tensor() {
    use wedge_core::package::{PackageLimits, read_header};
    let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge");
    let mut bytes = std::fs::read(bundled).unwrap();
    let parsed = read_header(&bytes, &PackageLimits::default()).unwrap();
    let t = &parsed.header.tensors[parsed.header.tensors.len() / 2];
    let at = parsed.data_offset + (t.offset + t.stored_len / 2) as usize;
    bytes[at] ^= 0x40;
    let dir = std::env::temp_dir().join(format!("wedge-damaged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let damaged = dir.join("damaged.wedge");
    std::fs::write(&damaged, &bytes).unwrap();
    let want = format!("tensor `{}`: checksum mismatch", t.name);
    let path = damaged.to_str().unwrap();

    let served = format!("d={path}");
    let runs: [(&str, Vec<&str>); 3] = [
        ("inspect", vec!["inspect", path]),
        ("embed", vec!["embed", "--model", path, "--device", "cpu"]),
        (
            "serve",
            vec!["serve", "--model", &served, "--device", "cpu", "--addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"],
        ),
    ];
    for (name, args) in runs {
        let mut child =
            wedge().args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"{\"text\":\"x\"}\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted a damaged file");
        assert!(said.contains(&want), "{name} does not name the damaged tensor ({want}): {said}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
