//! An Open Inference Protocol REST request body: JSON alone, or a JSON header of the length the
//! first two bytes give followed by binary tensors (Triton's binary extension).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let [high, low, body @ ..] = data {
        let header_length = usize::from(u16::from_be_bytes([*high, *low]));
        let _ = vae_serve::oip::rest::parse_request(body, Some(header_length));
        let _ = vae_serve::oip::rest::parse_request(body, None);
    }
});
