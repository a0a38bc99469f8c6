//! Every saved fuzz input through its target, on every test run: the corpora `cargo fuzz`
//! grew (`fuzz/corpus/<target>/`, minimized) and the input of every crash once found
//! (`fuzz/regressions/<target>/`, kept as it was found). A panic here is a regression.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_saved_input_runs_clean() {
    let root = fuzz_dir();
    for (name, target) in wedge_fuzz::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ is empty: every target keeps its corpus in the repository");
        let regressions = inputs(&root.join("regressions").join(name));
        for (path, bytes) in corpus.iter().chain(&regressions) {
            eprintln!("{}", path.display());
            target(bytes);
        }
        println!("{name}: {} corpus inputs, {} regressions", corpus.len(), regressions.len());
    }
}

#[test]
fn every_target_has_its_binary() {
    for (name, _) in wedge_fuzz::TARGETS {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(src.contains(&format!("wedge_fuzz::run(\"{name}\"")), "{} runs another target", path.display());
    }
}

/// The model seeds are whole, valid models, so that the fuzzers start from inputs that reach
/// the loaders and the kernels, not only the readers' first checks.
#[test]
fn the_model_seeds_load_and_run() {
    let seeds = wedge_fuzz::seeds();
    let of = |name: &str| seeds.iter().find(|(n, _)| *n == name).map(|(_, s)| s.clone()).unwrap_or_default();
    let cpu = wedge::Device::cpu();
    let [encoder, decoder] = of("wedge_file").try_into().expect("an encoder and a decoder package");
    let e = wedge::Embedder::from_bytes(&encoder, &cpu).expect("the encoder seed loads");
    assert_eq!(e.embed(&["hello"]).expect("and runs")[0].len(), 16);
    let lm =
        wedge::LanguageModel::from_wedge(&decoder, &cpu, wedge::LmOptions::default()).expect("the decoder seed loads");
    assert_eq!(lm.config().hidden_size, 8);
    for gguf in &of("gguf_file")[..2] {
        let lm = wedge::LanguageModel::from_gguf(gguf, &cpu, wedge::LmOptions::default()).expect("the GGUF seed loads");
        let mut state = lm.new_state(1, 8).expect("a cache");
        let seq = state.add().expect("a sequence");
        let logits = lm.score(&mut state, seq, &[1, 2]).expect("and runs");
        assert_eq!(logits.last().map(Vec::len), Some(lm.vocab().len()));
    }
}
