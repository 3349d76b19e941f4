//! The header of a model's weights file (model.safetensors), as the registry listing checks it:
//! the first 8 bytes give the length of the data after the header, the rest is the header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (length, header) = data.split_at(8);
    let data_len = u64::from_le_bytes(length.try_into().expect("8 bytes"));
    let _ = vae_serve::models::artifact::parse_safetensors_header(header, data_len);
});
