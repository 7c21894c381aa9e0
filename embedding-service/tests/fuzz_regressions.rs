//! Replays the committed fuzz corpora for corpus loading (fuzz/corpus/npy_corpus and
//! fuzz/corpus/faiss_index) through the fuzz targets' entry points, on every test run.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus") {
        run(&std::fs::read(entry.unwrap().path()).unwrap());
        replayed += 1;
    }
    replayed
}

#[test]
fn every_npy_input_in_the_fuzz_corpus_is_handled_without_panicking() {
    assert!(replay("npy_corpus", embedding_service::fuzzing::npy_corpus) >= 3);
}

#[test]
fn every_faiss_input_in_the_fuzz_corpus_is_handled_without_crashing() {
    assert!(replay("faiss_index", embedding_service::fuzzing::faiss_index) >= 2);
}

#[test]
fn a_forged_vector_length_is_refused_by_name_before_faiss_allocates_it() {
    // Found by fuzzing: this file's length field asks FAISS for 1.1 TB.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/faiss_index/forged-size-1tb");
    let error = embedding_service::corpus::CorpusSource::FaissIndex(path).load().unwrap_err().to_string();
    assert!(error.contains("is not a valid FAISS index") && error.contains("vector data holds"), "{error}");
}

#[test]
fn a_deeply_nested_npy_header_is_refused_before_npyz_parses_it() {
    // Found by fuzzing: npyz's header parser takes time exponential in the nesting depth; this
    // one would run for days.
    let mut header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), ".to_vec();
    header.extend([b'['; 40]);
    header.extend(b"}\n");
    let mut data = b"\x93NUMPY\x01\x00".to_vec();
    data.extend((header.len() as u16).to_le_bytes());
    data.extend(header);
    data.extend([0u8; 8]);
    let error = embedding_service::corpus::read_npy_matrix(&data[..], Path::new("nested.npy"), data.len() as u64)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a plain array's"), "{error}");
}
