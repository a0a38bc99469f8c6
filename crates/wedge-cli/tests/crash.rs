//! Crash consistency: `wedge serve` killed with SIGKILL at random moments while it writes its
//! disk cache and while its model file is being replaced (a hot reload). After every restart
//! the node starts, serves, and every embedding it answers, from the cache or not, equals the
//! embedding of that text by the model now on disk (computed here, in process): no torn value,
//! no value of another text, no stale value of the model it served before.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Rounds of start, serve, check and kill (`WEDGE_CRASH_ROUNDS` to change).
fn rounds() -> usize {
    std::env::var("WEDGE_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

/// Texts the rounds embed: enough that every round writes new cache entries.
fn texts() -> Vec<String> {
    (0..200).map(|i| format!("crash test sentence {i}: the edge node keeps what it wrote")).collect()
}

/// A small seeded generator (xorshift), so that a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts the node on the model file and the cache file; returns it with its address once it
/// serves.
fn start(model: &Path, cache: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wedge"))
        .args(["serve", "--device", "cpu", "--addr", "127.0.0.1:0", "--grpc-addr", ""])
        .arg("--model")
        .arg(format!("m={}", model.display()))
        .arg("--cache-path")
        .arg(cache)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.split("listening on http://").nth(1) {
            addr = Some(a.trim().to_string());
        }
        if line.contains("model ready") {
            break;
        }
    }
    // (the rest of the log drains on a thread, so the node never blocks on a full pipe)
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr.expect("the node said where it listens"))
}

/// Embeds `texts` in one request: the vectors, and whether all came from the cache; `None`
/// when the node is gone (killed mid-request).
fn embed(addr: &str, texts: &[&str]) -> Option<(Vec<Vec<f32>>, bool)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let body = serde_json::json!({"model": "m", "input": texts}).to_string();
    write!(
        s,
        "POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if head.starts_with("HTTP/1.1 503") {
        return None; // (the node is draining: it was killed, or it is reloading)
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let vectors = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    Some((vectors, head.to_ascii_lowercase().contains("x-wedge-cache: hit")))
}

/// Whether two unit vectors are the same embedding (batches of other sizes round differently;
/// another text or the other model is far away).
fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4)
}

/// Every text's embedding by each model, computed here.
fn references(models: &[Vec<u8>; 2], texts: &[String]) -> [Vec<Vec<f32>>; 2] {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    models.each_ref().map(|m| {
        let e = wedge::Embedder::from_bytes(m, &wedge::Device::cpu()).unwrap();
        e.embed(&refs).unwrap()
    })
}

/// The bundled model, and the same model with its token embeddings negated: another model,
/// with other embeddings, of the same shape.
fn two_models() -> [Vec<u8>; 2] {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge");
    let a = std::fs::read(bundled).unwrap();
    let (mut pkg, _) = wedge_core::Package::from_bytes(&a).unwrap();
    let t = pkg.tensors.iter_mut().find(|t| t.name == "embeddings.word_embeddings.weight").unwrap();
    let negated: Vec<f32> = t.to_f32().iter().map(|v| -v).collect();
    *t = wedge_core::Weight::quantize(&t.name, &t.shape, &negated, t.format).unwrap();
    let (b, _) = pkg.to_bytes(3).unwrap();
    [a, b]
}

/// Replaces the model file as operators do: in place (as `cp` does, so the node may read it
/// half written) or through a temporary file renamed over it.
fn replace(model: &Path, bytes: &[u8], in_place: bool) {
    if in_place {
        std::fs::write(model, bytes).unwrap();
    } else {
        let tmp = model.with_extension("wedge.new");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, model).unwrap();
    }
}

#[test]
fn kill_9_during_cache_writes_and_hot_reloads_serves_nothing_torn_or_stale() {
    let dir = tempfile::tempdir().unwrap();
    let (model, cache) = (dir.path().join("m.wedge"), dir.path().join("cache.redb"));
    let models = two_models();
    std::fs::write(&model, &models[0]).unwrap();
    let texts = texts();
    let expected = references(&models, &texts);
    let index = |t: &str| texts.iter().position(|x| x == t).unwrap();
    let mut on_disk = 0; // which model the file holds
    let mut rng = Rng(0x5eed_cafe_f00d);
    let (mut checked, mut hits) = (0usize, 0usize);
    let began = Instant::now();
    for round in 0..rounds() {
        let (mut node, addr) = start(&model, &cache);
        // texts earlier rounds wrote (and may have cached, for either model): the node serves
        // them as the model on disk embeds them
        let written = (round * 8).clamp(1, texts.len()) as u64;
        let picks: Vec<&str> = (0..4).map(|_| texts[rng.below(written) as usize].as_str()).collect();
        let (served, hit) = embed(&addr, &picks).expect("the restarted node serves");
        hits += usize::from(hit);
        for (text, v) in picks.iter().zip(&served) {
            assert!(
                same(v, &expected[on_disk][index(text)]),
                "round {round}: after a restart the node served for {text:?} a value that is not model {on_disk}'s"
            );
        }
        checked += picks.len();
        // new writes from two clients, the other model written over the file every other
        // round (the node reloads it), and a kill at a random moment among them
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (addr, expected) = (addr.clone(), expected.clone());
                let ids: Vec<usize> = (0..4).map(|i| (round * 8 + w * 4 + i) % texts.len()).collect();
                let batch: Vec<String> = ids.iter().map(|&i| texts[i].clone()).collect();
                std::thread::spawn(move || {
                    let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                    for _ in 0..20 {
                        let Some((vs, _)) = embed(&addr, &refs) else { break };
                        // (while it reloads, either model's answer is right; nothing else is)
                        for (&i, v) in ids.iter().zip(&vs) {
                            assert!(same(v, &expected[0][i]) || same(v, &expected[1][i]), "a torn value while serving");
                        }
                    }
                })
            })
            .collect();
        let reload = (round % 2 == 1).then(|| {
            on_disk = 1 - on_disk;
            let (model, bytes, in_place) = (model.clone(), models[on_disk].clone(), rng.below(2) == 0);
            std::thread::spawn(move || replace(&model, &bytes, in_place))
        });
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        node.kill().unwrap(); // SIGKILL
        node.wait().unwrap();
        for w in writers {
            w.join().unwrap();
        }
        if let Some(r) = reload {
            r.join().unwrap();
        }
    }
    let aside = cache.with_extension("redb.damaged");
    eprintln!(
        "{} rounds in {:.0?}: {checked} values checked after restarts, {hits} answers wholly from the cache; \
         damaged copy set aside: {}",
        rounds(),
        began.elapsed(),
        aside.exists()
    );
    assert!(hits > 0, "no answer came from the disk cache after a restart: the test checked nothing it wrote");
}
