//! Replays the fuzz corpus on stable: the seeds made from real requests must be accepted, and
//! no committed input (seed or crash that fuzzing found, `fuzz/regressions/`) may panic. The
//! fuzzing itself runs with `cargo fuzz` on nightly (`fuzz/README.md`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn seeds_made_from_real_requests_are_accepted_and_on_disk() {
    let seeds = harness::seeds();
    for (target, _) in harness::TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| t == target),
            "{target} has no seed"
        );
    }
    for (target, name, bytes) in &seeds {
        let run = harness::TARGETS
            .iter()
            .find(|(t, _)| t == target)
            .unwrap()
            .1;
        if let Err(e) = run(bytes) {
            panic!("{target} seed {name} was refused: {e}");
        }
        // cargo fuzz starts from the files; they must be the seeds as made today.
        let path = fuzz_dir().join("seeds").join(target).join(name);
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == *bytes,
            "{} is missing or stale: cargo test --test fuzz_corpus -- --ignored write_seeds",
            path.display()
        );
    }
}

#[test]
fn no_committed_input_panics() {
    let mut replayed = 0;
    for (target, run) in harness::TARGETS {
        for folder in ["seeds", "regressions"] {
            for path in files(&fuzz_dir().join(folder).join(target)) {
                let bytes = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&bytes));
                assert!(outcome.is_ok(), "{} panics", path.display());
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= harness::seeds().len(),
        "only {replayed} inputs replayed"
    );
}

/// Rewrites `fuzz/seeds/` from the bundled models' references and the example files.
#[test]
#[ignore = "writes files: run by hand when a bundled model or example changes"]
fn write_seeds() {
    for (target, name, bytes) in harness::seeds() {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
