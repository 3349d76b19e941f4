//! The web console: static assets compiled into the binary (no CDN, works offline), served at `/`.
//! Everything it shows comes from the public API, which it calls from the browser.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::problem::problem_response;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", body: include_str!("console/index.html") },
    Asset { name: "console.css", content_type: "text/css; charset=utf-8", body: include_str!("console/console.css") },
    Asset { name: "console.js", content_type: "text/javascript; charset=utf-8", body: include_str!("console/console.js") },
];

/// Whether a path is one of the console's own files: public even when reads need the API key,
/// since a browser cannot attach a bearer token to a page load (the page asks for the key).
pub fn is_public_asset(path: &str) -> bool {
    path == "/" || path.strip_prefix("/console/").is_some_and(|name| ASSETS.iter().any(|a| a.name == name))
}

pub async fn index(headers: HeaderMap) -> Response {
    respond(&ASSETS[0], &headers)
}

pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => respond(asset, &headers),
        None => problem_response(StatusCode::NOT_FOUND, format!("the console has no file `{name}`")),
    }
}

/// Serves an asset with an ETag of its content (which changes only with the binary), so reloads
/// revalidate cheaply and never show stale code after an upgrade.
fn respond(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(asset.body.as_bytes()));
    let cache =
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")), (header::ETAG, HeaderValue::from_str(&etag).expect("hex etag"))];
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.body).into_response()
}

/// 64-bit FNV-1a: a stable content fingerprint (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_files_are_public() {
        assert!(is_public_asset("/") && is_public_asset("/console/console.js"));
        assert!(!is_public_asset("/console/secret.txt") && !is_public_asset("/v1/models") && !is_public_asset("/console/"));
    }

    #[test]
    fn the_page_links_every_asset() {
        let page = ASSETS[0].body;
        for asset in &ASSETS[1..] {
            assert!(page.contains(&format!("/console/{}", asset.name)), "index.html does not load {}", asset.name);
        }
    }

    #[test]
    fn fingerprint_is_fnv1a() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
