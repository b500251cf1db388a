//! Who is calling: `Authorization: Bearer <credential>` resolved to a [`Caller`] with a
//! [`Role`]. A credential is an API key — compared by SHA-256 hash, in constant time
//! against every configured key, so the config holds no plain keys and timing tells
//! nothing — or, when `auth.jwt` is set, a JSON Web Token ([`super::jwt`]). Both become
//! the same `Caller`, under the same role rules ([`super::access`]); handlers only ever
//! see a `Caller`.
//!
//! This module must never log or echo a credential.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::jwt::Verifier;
use super::ApiError;
use crate::config::{hash_api_key, AuthConfig, ConfigError, Role};
use crate::node::NodeCore;

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    ApiKey,
    Jwt,
}

/// The authenticated principal of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The API key's name, or the JWT's `sub`; for the `worker` role, the worker id.
    pub name: String,
    pub role: Role,
    pub credential: Credential,
}

impl Caller {
    /// Who this is, as a write carries it to the leader.
    pub fn principal(&self) -> crate::model::Principal {
        crate::model::Principal { name: self.name.clone(), role: self.role }
    }

    /// The scope of its idempotency keys: an API key's name, or `jwt:` and the token's
    /// `sub`, so a JWT whose `sub` is a key's name never shares that key's records.
    pub fn scope(&self) -> String {
        match self.credential {
            Credential::ApiKey => self.name.clone(),
            Credential::Jwt => format!("jwt:{}", self.name),
        }
    }

    /// Fails with 403 unless the caller's role is at least `needed`. Workers are a separate
    /// principal and pass only where `needed` is `Worker`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.covers(needed) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                format!("role {:?} may not do this; {:?} is needed", self.role, needed).to_lowercase(),
            ))
        }
    }
}

/// The credentials a node accepts.
pub struct Auth {
    /// (SHA-256 of the key, who it is).
    keys: Vec<([u8; 32], Caller)>,
    jwt: Option<Verifier>,
}

impl Auth {
    pub fn from_config(config: &AuthConfig, extra_admin_keys: &[String]) -> Result<Auth, ConfigError> {
        let mut keys = Vec::new();
        let mut add = |sha256_hex: &str, name: String, role: Role| -> Result<(), ConfigError> {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(sha256_hex, &mut hash)
                .map_err(|_| ConfigError::Invalid(format!("api key {name}: sha256 must be 64 hex digits")))?;
            // Two entries for one key would leave its role to the order of the config.
            if keys.iter().any(|(h, c): &([u8; 32], Caller)| *h == hash || c.name == name) {
                return Err(ConfigError::Invalid(format!("api key {name}: its name or key is configured twice")));
            }
            keys.push((hash, Caller { name, role, credential: Credential::ApiKey }));
            Ok(())
        };
        for k in &config.api_keys {
            add(&k.hash(), k.name.clone(), k.role)?;
        }
        for (i, key) in extra_admin_keys.iter().enumerate() {
            let name = if i == 0 { "admin".to_string() } else { format!("admin-{i}") };
            add(&hash_api_key(key), name, Role::Admin)?;
        }
        let jwt = config.jwt.as_ref().map(Verifier::new).transpose()?;
        Ok(Auth { keys, jwt })
    }

    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be \"Bearer <api-key or jwt>\"".into()))?;
        let hash = key_digest(token);
        // Every key is compared, matched or not.
        let mut found = None;
        for (k, caller) in &self.keys {
            if bool::from(k.ct_eq(&hash)) {
                found = Some(caller);
            }
        }
        if let Some(caller) = found {
            return Ok(caller.clone());
        }
        if token.split('.').count() == 3 {
            let Some(verifier) = &self.jwt else {
                return Err(ApiError::Unauthorized(
                    "invalid credential: JWTs are not enabled on this node (auth.jwt)".into(),
                ));
            };
            let claims = verifier.verify(token).map_err(ApiError::Unauthorized)?;
            if claims.sub.is_empty() {
                return Err(ApiError::Unauthorized("JWT sub is empty".into()));
            }
            return Ok(Caller { name: claims.sub, role: claims.role, credential: Credential::Jwt });
        }
        Err(ApiError::Unauthorized("invalid API key".into()))
    }
}

/// The SHA-256 of an API key as the key table holds it.
fn key_digest(token: &str) -> [u8; 32] {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hash_api_key(token), &mut hash).expect("a SHA-256 hex digest");
    hash
}

/// A caller the node itself already authenticated: the dashboard ([`crate::ui`]) puts it
/// on the requests it makes to this router in process, for the signed-in user. Only Rust
/// code in this process can put a value into a request's extensions — nothing a network
/// client sends becomes one — and the request then passes the same role table, rate
/// limit and audit as any other.
#[derive(Debug, Clone)]
pub struct InProcessCaller(pub Caller);

impl Auth {
    /// The role and SHA-256 of the configured API key named `name`, if one still is: a
    /// dashboard session signed in with a key ends when the key is removed or replaced,
    /// or its role changes.
    pub fn key_named(&self, name: &str) -> Option<(Role, &[u8; 32])> {
        self.keys.iter().find(|(_, c)| c.name == name).map(|(h, c)| (c.role, h))
    }

    /// The SHA-256 of `token` when it is a configured API key (the dashboard keeps a tag
    /// of it in the session).
    pub fn key_hash_of(&self, token: &str) -> Option<[u8; 32]> {
        let hash = key_digest(token);
        self.keys.iter().any(|(k, _)| bool::from(k.ct_eq(&hash))).then_some(hash)
    }

    /// Whether JWTs are accepted at all.
    pub fn accepts_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// The `exp` of a JWT this node accepts (None for anything else): a dashboard session
    /// signed in with a token never outlives it.
    pub fn jwt_expiry(&self, token: &str) -> Option<u64> {
        self.jwt.as_ref()?.verify(token).ok().map(|c| c.exp)
    }
}

/// Middleware: authenticates and stores the [`Caller`] in the request extensions.
pub async fn require_auth(State(core): State<Arc<NodeCore>>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let authenticated = match req.extensions().get::<InProcessCaller>() {
        Some(InProcessCaller(caller)) => Ok(caller.clone()),
        None => core.auth.authenticate(header),
    };
    match authenticated {
        Ok(caller) => {
            // The audit layer, outside this one, learns who called.
            if let Some(slot) = req.extensions().get::<super::AuditCaller>() {
                *slot.0.lock().expect("audit slot") = Some(caller.clone());
            }
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}
