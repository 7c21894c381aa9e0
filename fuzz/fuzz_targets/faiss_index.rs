//! FAISS index files, loaded as the service loads its corpus. Must never crash the process.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    embedding_service::fuzzing::faiss_index(data);
});
