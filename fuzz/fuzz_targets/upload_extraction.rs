//! Upload extraction from a request body: multipart/form-data, JSON with base64 images, or a raw
//! image body, chosen by the first byte.
#![no_main]

use std::sync::OnceLock;

use axum::extract::FromRequest;
use libfuzzer_sys::fuzz_target;
use vae_serve::api::uploads::Uploads;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    let content_type = match kind % 4 {
        0 => "multipart/form-data; boundary=X",
        1 => "application/json",
        2 => "image/png",
        _ => "text/plain",
    };
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/classify")
        .header("content-type", content_type)
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a request");
    if let Ok(Uploads(images)) = runtime().block_on(Uploads::from_request(request, &())) {
        assert!(!images.is_empty() && images.len() <= vae_serve::api::uploads::MAX_IMAGES_PER_REQUEST);
    }
});
