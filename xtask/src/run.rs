//! The steps whose output says more than pass or fail: the test build (which test binary is
//! which target) and the test runs (each binary's or browser test's counts and time). Their
//! output still goes to the terminal, line by line, as it comes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::report::{Report, outcome};

/// Test binaries by path, named by their package's folder and source file
/// (`crates/wedge-cli/tests/minilm.rs`).
pub(crate) type Suites = HashMap<PathBuf, String>;

/// Builds the test binaries (`cargo test --no-run`), reading cargo's JSON messages on stdout
/// for their names; diagnostics still reach the terminal rendered.
pub(crate) fn build_tests(report: &mut Report, name: &str, mut cmd: Command) -> Option<Suites> {
    cmd.arg("--message-format=json-render-diagnostics").stdout(Stdio::piped());
    let t = report.begin(name, &cmd);
    let root = std::env::current_dir().unwrap_or_default();
    let mut suites = Suites::new();
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            report.end(name, t, format!("FAILED (cannot start cargo: {e})"), true);
            return None;
        }
    };
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let (Some(exe), Some(manifest), Some(src)) =
                (field(&line, "executable"), field(&line, "manifest_path"), field(&line, "src_path"))
            else {
                continue;
            };
            let pkg = Path::new(&manifest).parent().unwrap_or(Path::new(""));
            let src = Path::new(&src).strip_prefix(pkg).unwrap_or(Path::new(&src));
            let label = format!("{}/{}", pkg.strip_prefix(&root).unwrap_or(pkg).display(), src.display());
            suites.insert(PathBuf::from(exe), label);
        }
    }
    let (result, failed) = outcome(child.wait());
    if failed {
        report.end(name, t, result, true);
        return None;
    }
    report.end(name, t, format!("ok ({} test binaries)", suites.len()), false);
    Some(suites)
}

/// A string field of a JSON line, where its value has no escapes (paths here have none).
fn field(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &line[at..];
    let end = rest.find('"')?;
    let value = &rest[..end];
    (!value.contains('\\')).then(|| value.to_string())
}

/// One test binary or browser test seen in the output, until its result line.
struct Open {
    name: String,
    since: Instant,
}

/// Runs `cargo test`, recording each test binary (and doc-test run) as a suite with its
/// counts and wall time.
pub(crate) fn cargo_tests(report: &mut Report, name: &str, cmd: Command, suites: &Suites) {
    let mut open: Option<Open> = None;
    let close = |report: &mut Report, open: &mut Option<Open>, result: Option<&str>| {
        if let Some(o) = open.take() {
            let (text, failed) = match result {
                Some(r) => counts(r),
                None => ("FAILED (no result: the binary crashed?)".to_string(), true),
            };
            report.suite(&o.name, o.since.elapsed().as_secs_f64(), text, failed);
        }
    };
    merged(report, name, cmd, |report, line| {
        let l = line.trim_start();
        if let Some(rest) = l.strip_prefix("Running ") {
            close(report, &mut open, None);
            // "Running tests/minilm.rs (/path/to/deps/minilm-0123)"
            let exe = rest.rsplit_once(" (").map(|(_, p)| p.trim_end_matches(')'));
            let label = exe
                .and_then(|p| suites.get(Path::new(p)).or_else(|| suites.get(&std::env::current_dir().ok()?.join(p))))
                .cloned()
                .unwrap_or_else(|| rest.to_string());
            open = Some(Open { name: label, since: Instant::now() });
        } else if let Some(krate) = l.strip_prefix("Doc-tests ") {
            close(report, &mut open, None);
            open = Some(Open { name: format!("{krate} doc-tests"), since: Instant::now() });
        } else if let Some(result) = l.strip_prefix("test result: ") {
            close(report, &mut open, Some(result));
        }
    });
    close(report, &mut open, None);
}

/// "ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.12s"
fn counts(result: &str) -> (String, bool) {
    let failed = !result.starts_with("ok");
    let parts: Vec<&str> = result
        .split(['.', ';'])
        .map(str::trim)
        .filter(|p| p.ends_with("passed") || p.ends_with("failed") || p.ends_with("ignored"))
        .filter(|p| !p.starts_with("0 ") || p.ends_with("passed"))
        .collect();
    let text = parts.join(", ");
    (if failed { format!("FAILED: {text}") } else { text }, failed)
}

/// Runs node's test runner (TAP when its output is not a terminal), recording each top-level
/// test with its result and time.
pub(crate) fn node_tests(report: &mut Report, name: &str, cmd: Command) {
    let mut last: Option<(String, bool)> = None;
    merged(report, name, cmd, |report, line| {
        // "ok 3 - a Web Worker embeds too" / "not ok 3 - ...", then "  duration_ms: 1234.5"
        if let Some(rest) = line.strip_prefix("ok ").or_else(|| line.strip_prefix("not ok ")) {
            let title = rest.split_once(" - ").map_or(rest, |(_, t)| t);
            last = Some((title.to_string(), line.starts_with("not ")));
        } else if let Some(ms) = line.strip_prefix("  duration_ms: ").and_then(|v| v.trim().parse::<f64>().ok())
            && let Some((title, failed)) = last.take()
        {
            report.suite(&title, ms / 1000.0, if failed { "FAILED".into() } else { "ok".into() }, failed);
        }
    });
}

/// Runs a command with stdout and stderr merged into one pipe, in order, echoing each line
/// and handing it to `each`; records the step's time and result. Returns whether it succeeded.
fn merged(report: &mut Report, name: &str, mut cmd: Command, mut each: impl FnMut(&mut Report, &str)) -> bool {
    let t = report.begin(name, &cmd);
    let piped = std::io::pipe().and_then(|(r, w)| {
        cmd.stdout(w.try_clone()?).stderr(w);
        let child = cmd.spawn();
        // the command's copies of the write end must close, or the reader never ends
        drop(cmd);
        Ok((r, child?))
    });
    let (reader, mut child) = match piped {
        Ok(p) => p,
        Err(e) => {
            report.end(name, t, format!("FAILED (cannot start: {e})"), true);
            return false;
        }
    };
    for line in BufReader::new(reader).lines().map_while(Result::ok) {
        println!("{line}");
        each(report, &line);
    }
    let (result, failed) = outcome(child.wait());
    report.end(name, t, result, failed);
    !failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_field_is_read_up_to_its_quote() {
        let line = r#"{"reason":"compiler-artifact","executable":"/t/deps/minilm-1f","fresh":true}"#;
        assert_eq!(field(line, "executable").as_deref(), Some("/t/deps/minilm-1f"));
        assert_eq!(field(line, "manifest_path"), None);
        assert_eq!(field(r#"{"executable":null}"#, "executable"), None);
    }

    #[test]
    fn a_test_result_line_becomes_its_counts() {
        let ok = "ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.12s";
        assert_eq!(counts(ok), ("5 passed, 1 ignored".to_string(), false));
        let bad = "FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.00s";
        assert_eq!(counts(bad), ("FAILED: 3 passed, 2 failed".to_string(), true));
    }
}
