//! Every JSON body the api-service accepts from outside: items, bulk imports and events, parsed
//! and validated as the handlers do. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    api_service::fuzzing::json_bodies(data);
});
