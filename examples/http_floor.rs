//! The cost of HTTP alone, for the serving benchmark (bench/classify_peers.sh): an axum server on
//! the same HTTP stack as vae-serve that reads each `POST /classify` body and answers a fixed JSON
//! body, vae-serve's own answer for the benchmark's digit, without decoding or classifying it.
//!
//!     cargo run --release --example http_floor -- 127.0.0.1:8092 answer.json

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use axum::Router;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(answer_path)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: http_floor ADDR ANSWER_JSON_FILE");
    };
    let answer = Bytes::from(std::fs::read(&answer_path)?);
    let app = Router::new().route(
        "/classify",
        post(move |_body: Bytes| {
            let answer = answer.clone();
            async move { ([(CONTENT_TYPE, "application/json")], answer) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
