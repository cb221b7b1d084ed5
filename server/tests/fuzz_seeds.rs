//! Replays the committed fuzz seed corpus (`fuzz/seeds/<target>/`) through the same entry
//! points the fuzz targets use, so CI catches a regression without running the fuzzer.

use std::path::Path;

#[test]
fn every_seed_passes_its_target() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let mut replayed = 0;
    for (name, target) in trellis_server::fuzzing::TARGETS {
        let dir = seeds.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("seed directory {} is missing: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let data = std::fs::read(&path).expect("a readable seed");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: seed {} panics", path.display());
            count += 1;
        }
        assert!(count > 0, "{name} has no seeds");
        replayed += count;
    }
    assert!(replayed >= trellis_server::fuzzing::TARGETS.len());
}
