//! A training config file (`vae-serve train --config`), TOML or JSON by the first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vae_serve::training::cli::{parse_options, ConfigFormat};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, text)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let format = if kind & 1 == 0 { ConfigFormat::Toml } else { ConfigFormat::Json };
    let _ = parse_options(text, format);
});
