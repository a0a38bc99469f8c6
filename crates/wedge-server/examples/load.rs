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
//! ```
//! Every request embeds a text not sent before (a cache miss) unless `HIT_RATIO` (0..1) asks
//! for a share of repeats; `CHAT_RATIO` sends that share as chat completions (`max_tokens` 8)
//! to `URL` with `/v1/embeddings` replaced.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One finished request: its status (0: no answer), latency, and whether a 503 said when to
/// come back.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: f64,
    status: u16,
    ms: f64,
    retry_after: bool,
}

#[derive(Debug)]
struct Mix {
    hit_ratio: f64,
    chat_ratio: f64,
    counter: AtomicU64,
}

impl Mix {
    fn from_env() -> Mix {
        let ratio = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        Mix { hit_ratio: ratio("HIT_RATIO"), chat_ratio: ratio("CHAT_RATIO"), counter: AtomicU64::new(0) }
    }

    /// The next request: its URL and body.
    fn next(&self, url: &str) -> (String, String) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // a deterministic spread of the shares over the sequence
        let frac = |k: u64| ((n.wrapping_mul(k) >> 11) % 1000) as f64 / 1000.0;
        if frac(0x9E37_79B9_7F4A_7C15) < self.chat_ratio {
            let url = url.replace("/v1/embeddings", "/v1/chat/completions");
            let body = format!(
                r#"{{"messages":[{{"role":"user","content":"Say something about the number {}."}}],"max_tokens":8,"temperature":0}}"#,
                n % 50
            );
            return (url, body);
        }
        let text = if frac(0xC2B2_AE3D_27D4_EB4F) < self.hit_ratio {
            format!("How do I reset my password on edge node {}?", n % 20)
        } else {
            format!("Request {n}: how many requests can one edge node take before it sheds load?")
        };
        (url.to_string(), format!(r#"{{"model":"default","input":"{text}"}}"#))
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

async fn capacity(url: &str, seconds: f64, connections: usize) {
    let client = client();
    let mix = Arc::new(Mix::from_env());
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, mix, done, url) = (client.clone(), mix.clone(), done.clone(), url.to_string());
            tokio::spawn(async move {
                while Instant::now() < end {
                    let (u, body) = mix.next(&url);
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
}

async fn rate(url: &str, seconds: f64, rate: f64, pid: Option<u32>) {
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
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, samples, (u, body)) = (client.clone(), samples.clone(), mix.next(url));
        tasks.push(tokio::spawn(async move {
            let (status, retry_after) = send(&client, &u, body).await;
            let ms = due.elapsed().as_secs_f64() * 1e3;
            let at = due.duration_since(start).as_secs_f64();
            samples.lock().await.push(Sample { at, status, ms, retry_after });
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Some(s) = sampler {
        watch = s.await.unwrap_or_default();
    }
    let samples = samples.lock().await.clone();
    report(&samples, seconds, rate, &watch);
}

fn report(samples: &[Sample], seconds: f64, rate: f64, watch: &[(f64, f64, usize)]) {
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
    // p99 of the first and the last tenth of the run (a soak's stability)
    let window = |lo: f64, hi: f64| sorted(&|s| s.status == 200 && s.at >= lo && s.at < hi);
    let (first, last) = (window(0.0, seconds / 10.0), window(seconds * 0.9, seconds));
    println!("p99 first_tenth_ms={:.1} last_tenth_ms={:.1}", percentile(&first, 0.99), percentile(&last, 0.99));
    if let (Some(a), Some(b)) = (watch.iter().find(|w| w.0 >= seconds / 10.0), watch.last()) {
        let max = watch.iter().map(|w| w.1).fold(0.0, f64::max);
        println!(
            "server rss_mib after_warmup={:.1} end={:.1} max={max:.1} growth_pct={:.1} fds after_warmup={} end={}",
            a.1,
            b.1,
            (b.1 / a.1 - 1.0) * 100.0,
            a.2,
            b.2
        );
    }
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
            rate(url, num(2).unwrap_or(10.0), num(3).unwrap_or(100.0), pid).await;
        }
        _ => {
            eprintln!("usage: load capacity URL SECONDS CONNECTIONS | load rate URL SECONDS RATE [PID]");
            std::process::exit(2);
        }
    }
}
