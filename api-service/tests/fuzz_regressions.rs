//! Replays the committed fuzz corpus (fuzz/corpus/json_bodies: seeds and every input the fuzzer
//! kept) through the same entry point the fuzz target uses, on every test run.

#[test]
fn every_json_body_in_the_fuzz_corpus_is_handled_without_panicking() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/json_bodies");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus") {
        let path = entry.unwrap().path();
        api_service::fuzzing::json_bodies(&std::fs::read(&path).unwrap());
        replayed += 1;
    }
    assert!(replayed >= 4, "only {replayed} inputs in {}", dir.display());
}
