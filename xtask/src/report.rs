//! What ran, how long it took, and what did not run: collected as the steps go, printed at
//! the end so that every run shows where CI's time goes and what this machine could not check.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::Options;
use crate::setup::{Need, Setup};

#[derive(Debug)]
struct Row {
    name: String,
    /// 0 for a step, 1 for a suite or test inside one
    depth: usize,
    seconds: Option<f64>,
    result: String,
    failed: bool,
}

#[derive(Debug)]
pub(crate) struct Report {
    opts: Options,
    start: Instant,
    rows: Vec<Row>,
    installed: Vec<String>,
    missing: Vec<String>,
    skips: Vec<String>,
}

impl Report {
    pub(crate) fn new(opts: Options) -> Self {
        Self {
            opts,
            start: Instant::now(),
            rows: Vec::new(),
            installed: Vec::new(),
            missing: Vec::new(),
            skips: Vec::new(),
        }
    }

    pub(crate) fn setup_step(&mut self, name: &str, since: Instant) {
        self.row(&format!("setup: {name}"), 0, Some(since.elapsed().as_secs_f64()), "done".into(), false);
    }

    pub(crate) fn installed(&mut self, what: String) {
        eprintln!("xtask: installed {what}");
        self.installed.push(what);
    }

    /// A prerequisite that could not be found or installed: a failure when strict.
    pub(crate) fn missing(&mut self, need: Need, why: &str) {
        eprintln!("xtask: missing {need:?}: {why}");
        self.missing.push(format!("{need:?}: {why}"));
    }

    /// Whether every prerequisite of `step` is there; if not, the step is recorded as not run.
    pub(crate) fn needs(&mut self, step: &str, setup: &Setup, needs: &[Need]) -> bool {
        let Some((need, why)) = needs.iter().find_map(|n| setup.missing(*n).map(|w| (n, w))) else {
            return true;
        };
        let reason = format!("needs {need:?}, which is missing: {why}");
        self.skips.push(format!("{step}: {reason}"));
        self.row(step, 0, None, format!("not run ({reason})"), self.opts.strict);
        false
    }

    /// Runs a command with the terminal as its output; returns whether it succeeded.
    pub(crate) fn step(&mut self, name: &str, cmd: &mut Command) -> bool {
        eprintln!("== {name}: {}", shown(cmd));
        let t = Instant::now();
        let (result, failed) = outcome(cmd.status());
        self.row(name, 0, Some(t.elapsed().as_secs_f64()), result, failed);
        !failed
    }

    pub(crate) fn not_run(&mut self, name: &str, why: &str) {
        self.row(name, 0, None, format!("not run ({why})"), false);
    }

    /// A step whose parts (test binaries, browser tests) are recorded after it as suites.
    pub(crate) fn begin(&mut self, name: &str, cmd: &Command) -> Instant {
        eprintln!("== {name}: {}", shown(cmd));
        self.row(name, 0, None, String::new(), false);
        Instant::now()
    }

    /// Completes the step opened by the last [`Report::begin`] of that name.
    pub(crate) fn end(&mut self, name: &str, since: Instant, result: String, failed: bool) {
        if let Some(r) = self.rows.iter_mut().rev().find(|r| r.name == name && r.depth == 0) {
            r.seconds = Some(since.elapsed().as_secs_f64());
            r.result = result;
            r.failed = failed;
        }
    }

    pub(crate) fn suite(&mut self, name: &str, seconds: f64, result: String, failed: bool) {
        self.row(name, 1, Some(seconds), result, failed);
    }

    fn row(&mut self, name: &str, depth: usize, seconds: Option<f64>, result: String, failed: bool) {
        self.rows.push(Row { name: name.to_string(), depth, seconds, result, failed });
    }

    /// The checks the tests reported as skipped (`wedge-testkit`'s log: `check<TAB>reason`).
    pub(crate) fn read_skips(&mut self, log: &Path) {
        let Ok(text) = std::fs::read_to_string(log) else { return };
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            let entry = line.replacen('\t', ": skipped, ", 1);
            if seen.insert(entry.clone()) {
                self.skips.push(entry);
            }
        }
    }

    /// Prints the summary; fails when a step failed, or when strict and something was missing.
    pub(crate) fn finish(self) -> ExitCode {
        let mut out = String::new();
        let mode = if self.opts.strict { "strict" } else { "lenient" };
        let _ = writeln!(out, "\n== summary ({mode}{})", if self.opts.quick { ", quick" } else { "" });
        let width = self.rows.iter().map(|r| r.name.len() + 2 * r.depth).max().unwrap_or(0).min(70);
        for r in &self.rows {
            let name = format!("{}{}", "  ".repeat(r.depth), r.name);
            let secs = r.seconds.map_or(String::new(), |s| format!("{s:.1} s"));
            let _ = writeln!(out, "{name:<width$}  {secs:>9}  {}", r.result);
        }
        let total = self.start.elapsed().as_secs_f64();
        let _ = writeln!(out, "{:<width$}  {:>9}  ({:.1} min)", "total", format!("{total:.0} s"), total / 60.0);
        let list = |out: &mut String, head: &str, items: &[String]| {
            if items.is_empty() {
                let _ = writeln!(out, "{head}: none");
            } else {
                let _ = writeln!(out, "{head} ({}):", items.len());
                for i in items {
                    let _ = writeln!(out, "  {i}");
                }
            }
        };
        list(&mut out, "installed", &self.installed);
        if !self.missing.is_empty() {
            let head = if self.opts.strict { "missing (a failure: --lenient makes it a skip)" } else { "missing" };
            list(&mut out, head, &self.missing);
        }
        list(&mut out, "skipped checks", &self.skips);
        let failed: Vec<&str> = self.rows.iter().filter(|r| r.failed).map(|r| r.name.as_str()).collect();
        let ok = failed.is_empty() && (self.missing.is_empty() || !self.opts.strict);
        let _ = writeln!(out, "{}", if ok { "result: ok".to_string() } else { format!("result: FAILED {failed:?}") });
        print!("{out}");
        if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }
}

/// A step's result line, and whether it failed, from its command's exit.
pub(crate) fn outcome(status: std::io::Result<std::process::ExitStatus>) -> (String, bool) {
    match status {
        Ok(s) if s.success() => ("ok".to_string(), false),
        Ok(s) => (format!("FAILED ({s})"), true),
        Err(e) => (format!("FAILED (cannot start it: {e})"), true),
    }
}

/// The command line, as a user would type it.
fn shown(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let mut s = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
