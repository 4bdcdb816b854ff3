//! Every input of the fuzz corpora (`fuzz/corpus/<target>/`) and every crash found and
//! fixed (`fuzz/regressions/<target>/`) through its target's entry point, under plain
//! `cargo test`: what the fuzzers proved stays proven without cargo-fuzz.

use std::path::Path;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_and_regression_input_holds_its_targets_invariants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, run) in msys_milter::fuzz::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seed");
        for (path, data) in corpus
            .into_iter()
            .chain(inputs(&root.join("regressions").join(name)))
        {
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{path} fails the {name} target");
            replayed += 1;
        }
    }
    assert!(replayed > 0);
}

#[test]
fn each_fuzz_target_has_its_entry_point() {
    let targets =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/Cargo.toml")).unwrap();
    for (name, _) in msys_milter::fuzz::TARGETS {
        assert!(
            targets.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
    }
}
