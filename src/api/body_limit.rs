//! The answer to a body declared larger than `VAE_MAX_BODY_BYTES`. Answering 413 at once and
//! closing would reset the connection under a client that is still sending (Python's
//! `requests` and `http.client` send the whole body before they read), so it sees a broken pipe
//! instead of the 413. As nginx's lingering close does, the body is read and thrown away first,
//! bounded in bytes and time. Bodies without a declared length are cut off by the limit layer
//! inside this one as they stream.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

use super::problem::problem_response;
use crate::config::ServeArgs;

#[derive(Debug, Clone)]
pub struct OversizedBodies {
    max_body_bytes: usize,
    drain_bytes: usize,
    drain_time: Duration,
}

impl OversizedBodies {
    pub fn new(config: &ServeArgs) -> Self {
        Self {
            max_body_bytes: config.max_body_bytes,
            drain_bytes: config.drain_body_bytes,
            drain_time: Duration::from_millis(config.drain_body_ms),
        }
    }
}

pub async fn refuse_oversized_body(State(limits): State<OversizedBodies>, request: Request, next: Next) -> Response {
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > limits.max_body_bytes as u64) else {
        return next.run(request).await;
    };
    // A client waiting for `100 Continue` has not sent the body: it reads the 413 as it is.
    let awaits_continue = request.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let drained_all = !awaits_continue && drain(request, &limits).await >= declared;
    let mut response = problem_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body of {declared} bytes is larger than the limit of {} bytes (VAE_MAX_BODY_BYTES)", limits.max_body_bytes),
    );
    if !drained_all {
        // What is left unread cannot be skipped on this connection.
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads and discards the body up to the limits; returns how many bytes were read.
async fn drain(request: Request, limits: &OversizedBodies) -> u64 {
    let mut body = request.into_body().into_data_stream();
    let mut read = 0u64;
    let _ = tokio::time::timeout(limits.drain_time, async {
        while read < limits.drain_bytes as u64 {
            match body.next().await {
                Some(Ok(chunk)) => read += chunk.len() as u64,
                _ => break,
            }
        }
    })
    .await;
    read
}
