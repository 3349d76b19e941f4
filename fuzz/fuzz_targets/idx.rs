//! The IDX reader of MNIST-style datasets.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(array) = vae_serve::data::idx::parse(data, std::path::Path::new("fuzz.idx")) {
        assert_eq!(array.dims.iter().product::<usize>(), array.data.len());
    }
});
