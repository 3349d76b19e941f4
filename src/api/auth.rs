//! Bearer-token access control. With an API key configured, requests that change state (any
//! method but GET, HEAD and OPTIONS) need `Authorization: Bearer <key>`; with `auth_all`, reads
//! need it too, except the health probes and the console's own files.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::problem::problem_response;

#[derive(Clone)]
pub struct AccessPolicy {
    /// The key; never logged (its Debug form is redacted).
    key: Option<Arc<str>>,
    auth_all: bool,
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPolicy").field("key", &self.key.as_ref().map(|_| "<redacted>")).field("auth_all", &self.auth_all).finish()
    }
}

impl AccessPolicy {
    pub fn new(key: Option<String>, auth_all: bool) -> Self {
        Self { key: key.filter(|k| !k.is_empty()).map(Arc::from), auth_all }
    }

    fn needs_key(&self, method: &Method, path: &str) -> bool {
        let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let public =
            matches!(path, "/healthz" | "/readyz" | "/v2/health/live" | "/v2/health/ready") || super::console::is_public_asset(path);
        self.key.is_some() && (!read || (self.auth_all && !public))
    }

    fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        self.accepts_token(authorization.and_then(|v| v.to_str().ok()))
    }

    /// For calls that do not come through the HTTP router (gRPC): whether one that only `reads`,
    /// or one that infers or changes state, may go ahead with this `authorization` value.
    pub fn permits(&self, reads: bool, authorization: Option<&str>) -> bool {
        let needs_key = self.key.is_some() && (!reads || self.auth_all);
        !needs_key || self.accepts_token(authorization)
    }

    fn accepts_token(&self, authorization: Option<&str>) -> bool {
        let Some(key) = &self.key else { return true };
        let given = authorization.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        // Constant time in the key's contents, so timing does not reveal how much of it matched.
        given.as_bytes().ct_eq(key.as_bytes()).into()
    }
}

pub async fn require_api_key(State(policy): State<AccessPolicy>, request: Request, next: Next) -> Response {
    if policy.needs_key(request.method(), request.uri().path()) && !policy.accepts(request.headers().get(header::AUTHORIZATION)) {
        let mut response = problem_response(StatusCode::UNAUTHORIZED, "this request needs `Authorization: Bearer <VAE_API_KEY>`");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"vae-serve\""));
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_keys_exactly() {
        let policy = AccessPolicy::new(Some("secret".into()), false);
        let accepts = |given: &'static str| policy.accepts(Some(&HeaderValue::from_static(given)));
        assert!(accepts("Bearer secret"));
        for wrong in ["Bearer secreT", "Bearer secre", "Bearer secret!", "Bearer ", "bearer secret"] {
            assert!(!accepts(wrong), "{wrong}");
        }
    }

    #[test]
    fn mutations_need_the_key_and_reads_only_with_auth_all() {
        let open = AccessPolicy::new(None, true);
        assert!(!open.needs_key(&Method::POST, "/train"));
        let keyed = AccessPolicy::new(Some("k".into()), false);
        assert!(keyed.needs_key(&Method::POST, "/train") && keyed.needs_key(&Method::DELETE, "/v1/jobs/1"));
        assert!(!keyed.needs_key(&Method::GET, "/sample"));
        let strict = AccessPolicy::new(Some("k".into()), true);
        assert!(strict.needs_key(&Method::GET, "/sample") && !strict.needs_key(&Method::GET, "/healthz"));
        assert!(!strict.needs_key(&Method::GET, "/") && !strict.needs_key(&Method::GET, "/console/console.js"));
        assert!(strict.needs_key(&Method::GET, "/v1/datasets"));
        assert!(keyed.accepts(Some(&HeaderValue::from_static("Bearer k"))));
        assert!(!keyed.accepts(Some(&HeaderValue::from_static("Basic k"))) && !keyed.accepts(None));
        assert!(!format!("{keyed:?}").contains("\"k\""));
        assert!(keyed.permits(true, None) && !keyed.permits(false, None) && keyed.permits(false, Some("Bearer k")));
        assert!(!strict.permits(true, None) && strict.permits(true, Some("Bearer k")));
    }
}
