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
    let mut args = vec!["--model".into(), format!("m={}", model.display()).into(), "--cache-path".into()];
    args.push(cache.as_os_str().to_owned());
    start_with(&args)
}

/// Starts `wedge serve --device cpu` on a free port with `args`; returns it with its address
/// once its model is ready.
fn start_with(args: &[std::ffi::OsString]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wedge"))
        .args(["serve", "--device", "cpu", "--addr", "127.0.0.1:0", "--grpc-addr", ""])
        .args(args)
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

/// The node's value of one Prometheus series (0 when absent).
fn metric(addr: &str, series: &str) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines().filter_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok()).sum()
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

/// A `redis-server` (Debian's) on `port` keeping an append-only file in `dir`, fsynced at
/// every write: killed with SIGKILL, it restarts with what it had acknowledged.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16, dir: &Path) -> Option<Redis> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            wedge_testkit::unavailable("WEDGE_REQUIRE_REDIS", "the Redis cache tier", "no redis-server on PATH");
            return None;
        }
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--aof-load-truncated", "yes"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let r = Redis { child, port };
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(20) {
            if r.connection().is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok()) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn connection(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url()).ok()?.get_connection().ok()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash or the OOM killer would.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis killed with SIGKILL at random moments while a node writes to it, 100 times. A second
/// node, with no cache of its own, reads through to Redis: after every restart of Redis it
/// answers every text as the model embeds it, whether Redis kept the value, lost it, or (at
/// the end, damaged on purpose) holds bytes that fail their checksum; the writing node never
/// fails a request while Redis is down.
#[test]
fn redis_killed_during_writes_serves_nothing_torn_or_stale() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Some(mut redis) = Redis::start(port, dir.path()) else { return };
    let models = two_models();
    let model = dir.path().join("m.wedge");
    std::fs::write(&model, &models[0]).unwrap();
    let texts = texts();
    let expected = references(&models, &texts);
    let index = |t: &str| texts.iter().position(|x| x == t).unwrap();
    // the writer keeps a memory tier; the reader has none, so each of its hits is Redis's
    let node = |memory_bytes: u64, name: &str| {
        let toml = format!(
            "[[models]]\nname = \"m\"\npath = {:?}\n[cache]\nmemory_bytes = {memory_bytes}\n\
             redis_url = \"redis://127.0.0.1:{port}\"\nredis_prefix = \"crash:\"\nredis_timeout_ms = 1000\n",
            model.display().to_string()
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml).unwrap();
        start_with(&["--config".into(), path.into_os_string()])
    };
    let (mut writer, w_addr) = node(64 << 20, "writer");
    let (mut reader, r_addr) = node(0, "reader");
    let mut rng = Rng(0x0dd_ba11_5eed);
    let (mut checked, mut from_redis) = (0usize, 0usize);
    let began = Instant::now();
    for round in 0..rounds() {
        // two clients write new entries through the writer; Redis dies at a random moment
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (addr, expected) = (w_addr.clone(), expected.clone());
                let ids: Vec<usize> = (0..4).map(|i| (round * 8 + w * 4 + i) % texts.len()).collect();
                let batch: Vec<String> = ids.iter().map(|&i| texts[i].clone()).collect();
                std::thread::spawn(move || {
                    let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                    for _ in 0..5 {
                        let (vs, _) = embed(&addr, &refs).expect("the writer serves while Redis dies");
                        for (&i, v) in ids.iter().zip(&vs) {
                            assert!(same(v, &expected[0][i]), "the writer answered a wrong value");
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        redis.kill();
        for w in writers {
            w.join().unwrap();
        }
        redis = Redis::start(port, dir.path()).unwrap();
        // the reader answers texts written so far: from Redis when it kept them, else computed
        let written = ((round + 1) * 8).min(texts.len()) as u64;
        let picks: Vec<&str> = (0..4).map(|_| texts[rng.below(written) as usize].as_str()).collect();
        let (served, hit) = embed(&r_addr, &picks).expect("the reader serves");
        from_redis += usize::from(hit);
        for (text, v) in picks.iter().zip(&served) {
            assert!(
                same(v, &expected[0][index(text)]),
                "round {round}: the reader served for {text:?} a value that is not the model's"
            );
        }
        checked += picks.len();
    }
    let values_from_redis = metric(&r_addr, "wedge_cache_lookups_total{tier=\"redis\",result=\"hit\"}");
    // every value Redis holds damaged in place (a flipped byte): the reader serves none of them
    let mut c = redis.connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("crash:*").query(&mut c).unwrap();
    for k in &keys {
        let len: usize = redis::cmd("STRLEN").arg(k).query(&mut c).unwrap();
        let at = len / 2;
        let byte: Vec<u8> = redis::cmd("GETRANGE").arg(k).arg(at).arg(at).query(&mut c).unwrap();
        redis::cmd("SETRANGE").arg(k).arg(at).arg(vec![byte[0] ^ 0x20]).query::<()>(&mut c).unwrap();
    }
    let damaged_before = metric(&r_addr, "wedge_cache_tier_errors_total{tier=\"redis\",op=\"damaged\"}");
    for chunk in texts.chunks(8).take(4) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let (served, hit) = embed(&r_addr, &refs).expect("the reader serves");
        assert!(!hit, "a damaged value was served as a hit");
        for (text, v) in refs.iter().zip(&served) {
            assert!(same(v, &expected[0][index(text)]), "a damaged Redis value reached a client");
        }
    }
    let damaged = metric(&r_addr, "wedge_cache_tier_errors_total{tier=\"redis\",op=\"damaged\"}") - damaged_before;
    eprintln!(
        "{} kills of Redis in {:.0?}: {checked} values checked after restarts, {values_from_redis} of them \
         from Redis ({from_redis} answers wholly); {} keys at the end, {damaged} damaged values refused",
        rounds(),
        began.elapsed(),
        keys.len()
    );
    assert!(from_redis > 0, "no answer came from Redis after a restart: the test checked nothing it kept");
    assert!(damaged > 0.0, "no damaged value was detected");
    for n in [&mut writer, &mut reader] {
        n.kill().unwrap();
        n.wait().unwrap();
    }
}
