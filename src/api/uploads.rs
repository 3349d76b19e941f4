//! The three ways to send images: `multipart/form-data` (fields named `image`), a raw image
//! body (`image/png`, `image/jpeg`, …) or JSON `{"images": ["<base64>", …]}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use base64::Engine;
use serde::Deserialize;
use utoipa::ToSchema;

use super::problem::ApiError;

/// Most images one request may carry.
pub const MAX_IMAGES_PER_REQUEST: usize = 64;

/// Images as uploaded (still encoded).
pub struct Uploads(pub Vec<Bytes>);

/// JSON form of an upload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagesJson {
    /// Base64-encoded image files (PNG, JPEG, …); a `data:image/...;base64,` prefix is accepted.
    #[schema(min_items = 1, max_items = 64)]
    pub images: Vec<String>,
}

impl<S: Send + Sync> FromRequest<S> for Uploads {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        let essence = content_type.split(';').next().unwrap_or("").trim().to_string();
        let images = if essence == "multipart/form-data" {
            let mut multipart = Multipart::from_request(request, state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?;
            let mut images = Vec::new();
            while let Some(field) = multipart.next_field().await.map_err(|e| ApiError::BadRequest(e.body_text()))? {
                match field.name() {
                    Some("image") => images.push(field.bytes().await.map_err(|e| ApiError::BadRequest(e.body_text()))?),
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "unexpected form field {:?}: send images in fields named `image`",
                            other.unwrap_or("")
                        )))
                    }
                }
                check_count(images.len())?;
            }
            images
        } else if essence == "application/json" {
            let body = Bytes::from_request(request, state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?;
            let json: ImagesJson = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            check_count(json.images.len())?;
            json.images
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    let data = text.split_once("base64,").map_or(text.as_str(), |(_, d)| d).trim();
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map(Bytes::from)
                        .map_err(|e| ApiError::BadRequest(format!("images[{i}] is not valid base64: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else if essence.starts_with("image/") || essence == "application/octet-stream" {
            vec![Bytes::from_request(request, state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?]
        } else {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type `{}` is not accepted: send multipart/form-data, application/json or an image/* body",
                if essence.is_empty() { "(none)" } else { &essence }
            )));
        };
        if images.is_empty() || images.iter().all(|b| b.is_empty()) {
            return Err(ApiError::BadRequest("the request holds no image".into()));
        }
        Ok(Uploads(images))
    }
}

fn check_count(count: usize) -> Result<(), ApiError> {
    if count > MAX_IMAGES_PER_REQUEST {
        return Err(ApiError::BadRequest(format!("{count} images is more than the {MAX_IMAGES_PER_REQUEST} one request may carry")));
    }
    Ok(())
}
