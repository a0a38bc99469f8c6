//! `wedge serve`: the edge node. Configuration from a TOML file with flags on top; with no
//! models configured, or only language models, the bundled model as `all-MiniLM-L6-v2` (alias
//! `default`) too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use wedge_serve::{Config, ModelConfig, ModelFile, Service};

/// Flags of `wedge serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// A TOML configuration (see examples/wedge.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A model to serve, NAME=PATH or PATH (named after the file); repeatable. Replaces the
    /// configuration's models.
    #[arg(long = "model", value_name = "NAME=PATH")]
    models: Vec<String>,
    /// A folder of models: every .wedge and .gguf file in it, named by its file stem (with an
    /// optional <stem>.toml beside it), loaded on its first request and reloaded when the
    /// file changes.
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    addr: Option<String>,
    /// Address of the gRPC port (KServe v2; default 127.0.0.1:8081); "" for none, equal to
    /// --addr to share the HTTP port.
    #[arg(long)]
    grpc_addr: Option<String>,
    /// auto (a hardware GPU, else the CPU), gpu or cpu.
    #[arg(long)]
    device: Option<String>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most inputs per model run (1 turns batching off).
    #[arg(long)]
    max_batch_size: Option<usize>,
    /// How long an input may wait for a batch to fill, in microseconds.
    #[arg(long)]
    max_queue_delay_us: Option<u64>,
    /// Refuse (503) a request that would wait longer than this behind the queue, in
    /// milliseconds (0: only the queue's length bounds the wait).
    #[arg(long)]
    max_queue_wait_ms: Option<u64>,
    /// Disk cache file (redb); none by default.
    #[arg(long)]
    cache_path: Option<PathBuf>,
    /// Turn the prediction cache off.
    #[arg(long)]
    no_cache: bool,
    /// Language models on the CPU: the integer kernels (`[generation] fast_cpu`).
    #[arg(long)]
    fast: bool,
    /// Log format: human or json.
    #[arg(long)]
    log_format: Option<String>,
}

fn config(args: ServeArgs, bundled: impl FnOnce() -> Result<PathBuf>) -> Result<Config> {
    let mut c = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if !args.models.is_empty() {
        c.models = args.models.iter().map(|m| model_flag(m)).collect::<Result<_>>()?;
    }
    if let Some(d) = args.models_dir {
        c.registry.models_dir = Some(d);
    }
    // A node serving only language models serves the bundled embedding model beside them.
    // (a file that cannot be read counts as not one; loading it reports why)
    let files: Vec<ModelConfig> = c.all_models()?.iter().flat_map(|m| m.loadables()).map(|(m, _)| m).collect();
    if files.iter().all(|m| ModelFile::probe(&m.path).is_ok_and(ModelFile::is_language)) {
        c.models.push(ModelConfig {
            name: "all-MiniLM-L6-v2".into(),
            path: bundled()?,
            version: None,
            aliases: vec!["default".into()],
            batching: None,
            preload: None,
            versions: Vec::new(),
        });
    }
    if let Some(a) = args.addr {
        c.addr = a;
    }
    if let Some(a) = args.grpc_addr {
        c.grpc_addr = a;
    }
    if let Some(d) = args.device {
        c.device = d;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        c.tls = Some(wedge_serve::config::TlsConfig { cert, key });
    }
    if let Some(n) = args.max_batch_size {
        c.batching.max_batch_size = n;
    }
    if let Some(us) = args.max_queue_delay_us {
        c.batching.max_queue_delay_us = us;
    }
    if let Some(ms) = args.max_queue_wait_ms {
        c.batching.max_queue_wait_ms = ms;
    }
    if let Some(p) = args.cache_path {
        c.cache.disk_path = Some(p);
    }
    if args.no_cache {
        c.cache.enabled = false;
    }
    if args.fast {
        c.generation.fast_cpu = true;
    }
    if let Some(f) = args.log_format {
        c.log_format = f;
    }
    c.validate()?;
    Ok(c)
}

fn model_flag(m: &str) -> Result<ModelConfig> {
    let (name, path) = match m.split_once('=') {
        Some((n, p)) => (n.to_string(), PathBuf::from(p)),
        None => {
            let p = PathBuf::from(m);
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            (stem, p)
        }
    };
    if name.is_empty() {
        anyhow::bail!("--model `{m}`: give NAME=PATH");
    }
    Ok(ModelConfig { name, path, version: None, aliases: vec![], batching: None, preload: None, versions: vec![] })
}

fn init_logs(format: &str, telemetry: Option<&wedge_server::telemetry::Telemetry>) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    // (the filter is the logs' own: the trace layer takes wedge's DEBUG spans either way)
    let logs = if format == "json" { logs.json().boxed() } else { logs.boxed() };
    let traces = telemetry.map(wedge_server::telemetry::Telemetry::layer);
    let _ = tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces).try_init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

pub(crate) fn serve(args: ServeArgs, bundled: impl FnOnce() -> Result<PathBuf>) -> Result<()> {
    // The configuration file's [[models]] are taken again when it changes, unless --model
    // flags replace them (or it lists none, and the bundled model stands in).
    let config_file = args.config.clone().filter(|_| args.models.is_empty());
    let config = config(args, bundled)?;
    let config_file = config_file.filter(|p| Config::load(p).is_ok_and(|c| !c.models.is_empty()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    // (the trace exporters do their I/O on the runtime)
    let telemetry = {
        let _entered = runtime.enter();
        wedge_server::telemetry::Telemetry::start(&config.telemetry)?
    };
    init_logs(&config.log_format, telemetry.as_ref());
    if let Some(t) = &telemetry {
        let s = t.settings();
        tracing::info!(endpoint = %s.endpoint, protocol = %s.protocol, sample_ratio = s.sample_ratio, "exporting traces");
    }
    for (m, _) in config.all_models()?.iter().flat_map(ModelConfig::loadables) {
        if !Path::new(&m.path).is_file() {
            anyhow::bail!("model `{}`: no file at {}", m.name, m.path.display());
        }
    }
    let device = crate::open_device(&config.device)?;
    tracing::info!(device = crate::device_line(&device), "device chosen");
    let served = runtime.block_on(async move {
        let mut registry = prometheus_client::registry::Registry::default();
        let (addr, grpc_addr) = (config.addr.clone(), config.grpc_addr.clone());
        let service = Arc::new(Service::new(config, device, &mut registry)?);
        let mut server = wedge_server::Server::bind(service.clone(), registry, &addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let scheme = if server.is_tls() { "https" } else { "http" };
        tracing::info!("listening on {scheme}://{}", server.local_addr()?);
        if !grpc_addr.is_empty() && grpc_addr != addr {
            server.bind_grpc(&grpc_addr).await.with_context(|| format!("cannot listen for gRPC on {grpc_addr}"))?;
        }
        let grpc = server.grpc_addr().or_else(|| server.local_addr().ok().filter(|_| !grpc_addr.is_empty()));
        if let Some(g) = grpc {
            tracing::info!("gRPC (KServe v2) on {g}");
        }
        // (kept until shutdown: dropping it stops the watching)
        let watcher =
            if service.config().registry.watch { Some(service.watch_files(config_file.as_deref())?) } else { None };
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
        let loader = service.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = loader.load_models() {
                let _ = failed_tx.send(e.into());
            }
        });
        let mut load_error = None;
        let stop = async {
            tokio::select! {
                () = shutdown_signal() => tracing::info!("signal received"),
                Ok(e) = failed_rx => load_error = Some(e),
            }
        };
        server.run(stop, Duration::from_secs(30)).await?;
        drop(watcher);
        let s = service.clone();
        tokio::task::spawn_blocking(move || s.shutdown()).await.context("shutdown")?;
        tracing::info!("stopped");
        match load_error {
            Some(e) => Err(e.context("loading models")),
            None => Ok(()),
        }
    });
    if let Some(t) = telemetry {
        t.shutdown();
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_flags() {
        let m = model_flag("mini=/m/x.wedge").unwrap();
        assert_eq!((m.name.as_str(), m.path.as_path()), ("mini", Path::new("/m/x.wedge")));
        assert_eq!(model_flag("/m/minilm-q4.wedge").unwrap().name, "minilm-q4");
        assert!(model_flag("=x").is_err());
    }
}
