//! The example runs as its documentation says: it writes the package, wedge embeds with it, and
//! wedge's embeddings match burn's.

#![allow(clippy::unwrap_used)]

#[test]
fn the_example_exports_and_embeds() {
    let dir = std::env::temp_dir().join(format!("burn-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("encoder.wedge");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_burn-export")).arg(&out).arg("f32").output().unwrap();
    let text = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(run.status.success(), "{text}{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.is_file(), "{text}");
    let cosines: Vec<f32> =
        text.lines().filter_map(|l| l.split("cosine(wedge, burn) ").nth(1)?.trim().parse().ok()).collect();
    assert_eq!(cosines.len(), 2, "{text}");
    assert!(cosines.iter().all(|&c| c > 0.9999), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}
