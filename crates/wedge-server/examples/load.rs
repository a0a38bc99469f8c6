//! A load generator for `wedge serve`'s embeddings route, open loop (requests start on a
//! schedule, whatever the server does, and each latency counts from its scheduled start, so a
//! slow server cannot slow the load down and hide its queueing), for the overload and soak
//! benchmarks (`benches/overload.sh`, `benches/soak.sh`). It prints figures; it asserts
//! nothing.
//!
//! ```text
//! load capacity URL SECONDS CONNECTIONS            closed loop: requests/s the server sustains
//! load rate URL SECONDS RATE [PID]                 open loop at RATE/s: latencies by status,
//!                                                  503s with Retry-After, the server's RSS and fds
//! load soak URL SECONDS [PID]                      waits for the server to be ready, measures its
//!                                                  capacity (15 s, 16 connections), then `rate`
//!                                                  at 80% of it
//! ```
//! Every request embeds a text not sent before (by this process: a cache miss) unless
//! `HIT_RATIO` (0..1) asks for a share of repeats; `CHAT_RATIO` sends that share as chat
//! completions (`max_tokens` 8, repeats in the same share) to `URL` with `/v1/embeddings`
//! replaced. `LOAD_STRICT=1`: `rate` exits with status 1 when a request got anything but 200,
//! or the server holds more open files once the run's connections are closed than before it
//! (beyond 2), or its RSS grew by more than `LOAD_MAX_RSS_GROWTH_PCT` percent after the first
//! tenth of the run when that is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One finished request: when it was due, its status (0: no answer), latency, whether a 503
/// said when to come back, and whether it was a chat completion.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: f64,
    status: u16,
    ms: f64,
    retry_after: bool,
    chat: bool,
}

#[derive(Debug)]
struct Mix {
    hit_ratio: f64,
    chat_ratio: f64,
    counter: AtomicU64,
    /// This process's mark in the texts it sends new: another run's cache holds none of them.
    run: u64,
}

impl Mix {
    fn from_env() -> Mix {
        let ratio = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Mix { hit_ratio: ratio("HIT_RATIO"), chat_ratio: ratio("CHAT_RATIO"), counter: AtomicU64::new(0), run }
    }

    /// The next request: its URL and body, and whether it is a chat completion.
    fn next(&self, url: &str) -> (String, String, bool) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // a deterministic spread of the shares over the sequence
        let frac = |k: u64| ((n.wrapping_mul(k) >> 11) % 1000) as f64 / 1000.0;
        let repeat = frac(0xC2B2_AE3D_27D4_EB4F) < self.hit_ratio;
        if frac(0x9E37_79B9_7F4A_7C15) < self.chat_ratio {
            let url = url.replace("/v1/embeddings", "/v1/chat/completions");
            let topic = if repeat { format!("the number {}", n % 8) } else { format!("request {:x}-{n}", self.run) };
            let body = format!(
                r#"{{"messages":[{{"role":"user","content":"Say something about {topic}."}}],"max_tokens":8,"temperature":0}}"#
            );
            return (url, body, true);
        }
        let text = if repeat {
            format!("How do I reset my password on edge node {}?", n % 20)
        } else {
            format!("Request {:x}-{n}: how many requests can one edge node take before it sheds load?", self.run)
        };
        (url.to_string(), format!(r#"{{"model":"default","input":"{text}"}}"#), false)
    }
}

async fn send(client: &Http, url: &str, body: String) -> (u16, bool) {
    let req = match hyper::Request::post(url).header("content-type", "application/json").body(Full::new(body.into())) {
        Ok(r) => r,
        Err(_) => return (0, false),
    };
    match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let retry = resp.headers().contains_key("retry-after");
            let _ = resp.into_body().collect().await;
            (status, retry)
        }
        _ => (0, false),
    }
}

fn client() -> Http {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(connector)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `VmRSS` in MiB and the open file descriptors of a process.
fn process(pid: u32) -> Option<(f64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((kb / 1024.0, fds))
}

/// Requests/s the server sustains with `connections` clients in a closed loop (printed).
async fn capacity(url: &str, seconds: f64, connections: usize) -> f64 {
    let client = client();
    let mix = Arc::new(Mix::from_env());
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, mix, done, url) = (client.clone(), mix.clone(), done.clone(), url.to_string());
            tokio::spawn(async move {
                while Instant::now() < end {
                    let (u, body, _) = mix.next(&url);
                    if send(&client, &u, body).await.0 == 200 {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let rps = done.load(Ordering::Relaxed) as f64 / seconds;
    println!("capacity rps={rps:.1} connections={connections} seconds={seconds}");
    rps
}

/// Waits up to a minute for the server of `url` to say it is ready (`/v2/health/ready`).
async fn wait_ready(url: &str) -> bool {
    let Some(root) = url.find("/v1/").map(|i| &url[..i]) else { return false };
    let ready = format!("{root}/v2/health/ready");
    let client = client();
    for _ in 0..600 {
        let req = hyper::Request::get(&ready).body(Full::new(Bytes::new()));
        if let Ok(req) = req
            && let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(1), client.request(req)).await
            && resp.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Offers `rate` requests/s for `seconds`, prints the figures, and says whether the run was
/// clean (see `LOAD_STRICT`).
async fn rate(url: &str, seconds: f64, rate: f64, pid: Option<u32>) -> bool {
    let client = client();
    let mix = Arc::new(Mix::from_env());
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let start = Instant::now();
    let total = (seconds * rate) as u64;
    let mut watch = Vec::new();
    let sampler = pid.map(|pid| {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while start.elapsed().as_secs_f64() < seconds + 1.0 {
                if let Some(p) = process(pid) {
                    seen.push((start.elapsed().as_secs_f64(), p.0, p.1));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            seen
        })
    });
    // the server's open files with no connection of ours (before, and after the run's closed)
    let idle_before = pid.and_then(process).map(|p| p.1);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, samples, (u, body, chat)) = (client.clone(), samples.clone(), mix.next(url));
        tasks.push(tokio::spawn(async move {
            let (status, retry_after) = send(&client, &u, body).await;
            let ms = due.elapsed().as_secs_f64() * 1e3;
            let at = due.duration_since(start).as_secs_f64();
            samples.lock().await.push(Sample { at, status, ms, retry_after, chat });
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Some(s) = sampler {
        watch = s.await.unwrap_or_default();
    }
    let samples = samples.lock().await.clone();
    drop(client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = idle_before.zip(pid.and_then(process).map(|p| p.1));
    report(&samples, seconds, rate, &watch, idle)
}

/// Prints the figures; whether the run was clean.
fn report(
    samples: &[Sample],
    seconds: f64,
    rate: f64,
    watch: &[(f64, f64, usize)],
    idle_fds: Option<(usize, usize)>,
) -> bool {
    let sorted = |f: &dyn Fn(&Sample) -> bool| {
        let mut v: Vec<f64> = samples.iter().filter(|s| f(s)).map(|s| s.ms).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let ok = sorted(&|s| s.status == 200);
    let shed = sorted(&|s| s.status == 503);
    let with_retry = samples.iter().filter(|s| s.status == 503 && s.retry_after).count();
    let other = samples.iter().filter(|s| s.status != 200 && s.status != 503).count();
    println!(
        "rate offered={rate:.0}/s seconds={seconds} sent={} ok={} ok_rps={:.1} p50_ms={:.1} p95_ms={:.1} p99_ms={:.1}",
        samples.len(),
        ok.len(),
        ok.len() as f64 / seconds,
        percentile(&ok, 0.5),
        percentile(&ok, 0.95),
        percentile(&ok, 0.99)
    );
    println!(
        "shed 503={} with_retry_after={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}; other statuses or no answer={other}",
        shed.len(),
        with_retry,
        percentile(&shed, 0.5),
        percentile(&shed, 0.99),
        shed.last().copied().unwrap_or(f64::NAN)
    );
    if samples.iter().any(|s| s.chat) {
        for (kind, chat) in [("embeddings", false), ("chat", true)] {
            let v = sorted(&|s| s.status == 200 && s.chat == chat);
            println!(
                "{kind} ok={} p50_ms={:.1} p95_ms={:.1} p99_ms={:.1}",
                v.len(),
                percentile(&v, 0.5),
                percentile(&v, 0.95),
                percentile(&v, 0.99)
            );
        }
    }
    // p99 of the first and the last tenth of the run (a soak's stability)
    let window = |lo: f64, hi: f64| sorted(&|s| s.status == 200 && s.at >= lo && s.at < hi);
    let (first, last) = (window(0.0, seconds / 10.0), window(seconds * 0.9, seconds));
    let (p_first, p_last) = (percentile(&first, 0.99), percentile(&last, 0.99));
    println!(
        "p99 first_tenth_ms={p_first:.1} last_tenth_ms={p_last:.1} change_pct={:.1}",
        (p_last / p_first - 1.0) * 100.0
    );
    let mut clean = other == 0 && shed.is_empty();
    if let (Some(a), Some(b)) = (watch.iter().find(|w| w.0 >= seconds / 10.0), watch.last()) {
        let max = watch.iter().map(|w| w.1).fold(0.0, f64::max);
        let growth = (b.1 / a.1 - 1.0) * 100.0;
        println!(
            "server rss_mib after_warmup={:.1} end={:.1} max={max:.1} growth_pct={growth:.1} fds after_warmup={} end={}",
            a.1, b.1, a.2, b.2
        );
        let bound = std::env::var("LOAD_MAX_RSS_GROWTH_PCT").ok().and_then(|v| v.parse::<f64>().ok());
        if let Some(bound) = bound.filter(|&b| growth > b) {
            println!("the server's RSS grew {growth:.1}% after warm-up, more than {bound}%");
            clean = false;
        }
    }
    if let Some((before, after)) = idle_fds {
        println!("server fds with no client connection: before={before} after={after}");
        if after > before + 2 {
            println!("the server's open files grew from {before} to {after} over the run");
            clean = false;
        }
    }
    clean
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<f64>().ok());
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("capacity"), Some(url)) => {
            capacity(url, num(2).unwrap_or(10.0), num(3).unwrap_or(32.0) as usize).await;
        }
        (Some("rate"), Some(url)) => {
            let pid = args.get(4).and_then(|p| p.parse().ok());
            let clean = rate(url, num(2).unwrap_or(10.0), num(3).unwrap_or(100.0), pid).await;
            strict(clean);
        }
        (Some("soak"), Some(url)) => {
            if !wait_ready(url).await {
                eprintln!("load: the server at {url} was not ready within a minute");
                std::process::exit(1);
            }
            let seconds = num(2).unwrap_or(600.0);
            let cap = capacity(url, 15.0, 16).await;
            println!("soak {seconds}s at 80% of {cap:.1}/s");
            // (the capacity run's connections close first: the run starts from an idle server)
            tokio::time::sleep(Duration::from_secs(2)).await;
            let clean = rate(url, seconds, cap * 0.8, args.get(3).and_then(|p| p.parse().ok())).await;
            strict(clean);
        }
        _ => {
            eprintln!(
                "usage: load capacity URL SECONDS CONNECTIONS | load rate URL SECONDS RATE [PID] | load soak URL SECONDS [PID]"
            );
            std::process::exit(2);
        }
    }
}

/// Under `LOAD_STRICT=1`, a run that was not clean ends the process with status 1.
fn strict(clean: bool) {
    if !clean && std::env::var("LOAD_STRICT").is_ok_and(|v| v == "1") {
        eprintln!("load: the run was not clean (LOAD_STRICT=1)");
        std::process::exit(1);
    }
}
