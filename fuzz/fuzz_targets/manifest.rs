//! A model folder's manifest.json, as loading and the registry listing read it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vae_serve::models::artifact::parse_manifest(data);
});
