//! What wedge's test suites share about checks that cannot run on this machine.
//!
//! A test that cannot make its comparison here (no GPU adapter, no AVX-512, no model folder)
//! calls [`skip`]: the reason goes to stderr past libtest's output capture, so it shows even
//! when the test passes, and to the file named by `WEDGE_SKIP_LOG`, from which `cargo xtask
//! test` lists every skipped check in its summary. When the prerequisite is one the test
//! command installs, [`unavailable`] turns the skip into a failure under the variable that
//! requires it (`WEDGE_REQUIRE_GPU=1`, `WEDGE_REQUIRE_MODEL=1`).
//!
//! Only tests depend on this crate, and it depends on nothing.

use std::io::Write;
use std::path::Path;

/// The variable that names the skip log the test command reads.
pub const SKIP_LOG: &str = "WEDGE_SKIP_LOG";

/// Whether `var` is set to `1`: the prerequisite it stands for must then be present.
pub fn required(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}

/// Reports that `check` did not run here, and why.
pub fn skip(check: &str, reason: &str) {
    let line = format!("wedge skip: {check}: {reason}\n");
    // io::stderr() itself, not eprintln!: libtest captures the print macros only
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        let _ = append(Path::new(&path), check, reason);
    }
}

/// One line `check<TAB>reason` in one write on an O_APPEND file, so that the lines of tests
/// running at the same time do not interleave.
fn append(log: &Path, check: &str, reason: &str) -> std::io::Result<()> {
    let one_line = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let entry = format!("{}\t{}\n", one_line(check), one_line(reason));
    std::fs::OpenOptions::new().create(true).append(true).open(log)?.write_all(entry.as_bytes())
}

/// A prerequisite of `check` is missing: a failure when `var` requires it, else a skip.
///
/// # Panics
/// When `var` is set to `1`, with the check and the reason in the message.
pub fn unavailable(var: &str, check: &str, reason: &str) {
    assert!(!required(var), "{var}=1, but {check} cannot run: {reason}");
    skip(check, reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_one_line_of_the_log() {
        let log = std::env::temp_dir().join(format!("wedge-testkit-{}.tsv", std::process::id()));
        append(&log, "a check", "two\nlines").expect("append");
        append(&log, "another", "why\tnot").expect("append");
        let text = std::fs::read_to_string(&log).expect("log written");
        std::fs::remove_file(&log).ok();
        assert_eq!(text, "a check\ttwo lines\nanother\twhy not\n");
    }
}
