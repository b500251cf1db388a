//! Who is calling: `Authorization: Bearer <credential>` resolved to a [`Caller`] with a
//! [`Role`]. API keys are compared by SHA-256 hash, so the config holds no plain keys.
//! JWT verification plugs in beside API keys here (a later issue); handlers only ever see
//! a `Caller`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::config::{hash_api_key, AuthConfig, Role};
use crate::node::NodeCore;

/// The authenticated principal of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// Fails with 403 unless the caller's role is at least `needed`. Workers are a separate
    /// principal and pass only where `needed` is `Worker`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        let ok = match (self.role, needed) {
            (Role::Worker, Role::Worker) => true,
            (Role::Worker, _) => false,
            (have, need) => have >= need,
        };
        if ok {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                format!("role {:?} may not do this; {:?} is needed", self.role, needed).to_lowercase(),
            ))
        }
    }
}

/// The API keys a node accepts, by hash.
pub struct Auth {
    keys: BTreeMap<String, Caller>,
}

impl Auth {
    pub fn from_config(config: &AuthConfig, extra_admin_keys: &[String]) -> Auth {
        let mut keys = BTreeMap::new();
        for k in &config.api_keys {
            keys.insert(k.sha256.to_ascii_lowercase(), Caller { name: k.name.clone(), role: k.role });
        }
        for (i, key) in extra_admin_keys.iter().enumerate() {
            let name = if i == 0 { "admin".to_string() } else { format!("admin-{i}") };
            keys.insert(hash_api_key(key), Caller { name, role: Role::Admin });
        }
        Auth { keys }
    }

    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be \"Bearer <api-key or jwt>\"".into()))?;
        self.keys.get(&hash_api_key(token)).cloned().ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))
    }
}

/// Middleware: authenticates and stores the [`Caller`] in the request extensions.
pub async fn require_auth(State(core): State<Arc<NodeCore>>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match core.auth.authenticate(header) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}
