//! Corpus matrices and id vectors in `.npy` form. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    embedding_service::fuzzing::npy_corpus(data);
});
