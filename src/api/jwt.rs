//! JSON Web Tokens: verifying them for [`super::auth`], and minting them for
//! `raftcron token create`.
//!
//! The algorithm is the node's configuration (`auth.jwt.algorithm`), never the token's own
//! `alg` header: a token signed any other way — `none`, or HS256 keyed with an RS256
//! public key — is refused before its signature is looked at. `exp` is required; `nbf`,
//! `iss` and `aud` are checked (the last two when configured) with `leeway_s` of clock
//! skew. The claims that matter are `sub` (the caller's name; for the `worker` role, the
//! worker id it may act for) and `role`.
//!
//! This module must never log a token or a secret.

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, JwtAlgorithm, JwtConfig, Role};

/// The claims raftcron reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// A string or a list of strings (checked by the library against `auth.jwt.audience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read { path: path.into(), source })
}

/// Verifies tokens as one node's configuration says.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    algorithm: JwtAlgorithm,
}

impl Verifier {
    pub fn new(config: &JwtConfig) -> Result<Verifier, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid(format!("auth.jwt: {why}"));
        let key = match config.algorithm {
            JwtAlgorithm::HS256 => DecodingKey::from_secret(config.hs_secret()?.as_bytes()),
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                let path =
                    config.public_key_file.as_deref().ok_or_else(|| invalid("public_key_file is unset".into()))?;
                let pem = read_pem(path)?;
                let key = if config.algorithm == JwtAlgorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                key.map_err(|e| invalid(format!("{} is not a {:?} public key: {e}", path.display(), config.algorithm)))?
            }
        };
        let mut validation = Validation::new(algorithm(config.algorithm));
        validation.leeway = config.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not just checked when present.
        let mut required = vec!["exp", "sub"];
        match &config.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier { key, validation, algorithm: config.algorithm })
    }

    /// The token's claims, or why it is refused (a message for the 401, naming no secret).
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            // Pools (`prefix-*`) are for configured API keys only: a token minted for one
            // worker must not stand for a whole pool.
            Ok(data) if data.claims.role == Role::Worker && data.claims.sub.contains('*') => {
                Err("a worker JWT's sub must be one worker id, not a pool".into())
            }
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => "JWT has expired (exp)".into(),
                ErrorKind::ImmatureSignature => "JWT is not valid yet (nbf)".into(),
                ErrorKind::InvalidSignature => "JWT signature does not verify".into(),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    format!("JWT algorithm refused: this node accepts {:?} only", self.algorithm)
                }
                ErrorKind::InvalidIssuer => "JWT issuer (iss) is not the one this node accepts".into(),
                ErrorKind::InvalidAudience => "JWT audience (aud) is not the one this node accepts".into(),
                ErrorKind::MissingRequiredClaim(c) => format!("JWT lacks the required claim {c:?}"),
                ErrorKind::Json(e) => format!("JWT claims are malformed: {e}"),
                _ => format!("malformed JWT: {e}"),
            }),
        }
    }
}

/// Mints a token for `claims`: HS256 from the configured secret, RS256/ES256 from
/// `private_key` (PEM).
pub fn mint(config: &JwtConfig, claims: &Claims, private_key: Option<&Path>) -> Result<String, String> {
    let key = match config.algorithm {
        JwtAlgorithm::HS256 => {
            let secret = config.hs_secret().map_err(|e| e.to_string())?;
            EncodingKey::from_secret(secret.as_bytes())
        }
        JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
            let path = private_key.ok_or_else(|| format!("{:?} tokens need --private-key FILE", config.algorithm))?;
            let pem = read_pem(path).map_err(|e| e.to_string())?;
            let key = if config.algorithm == JwtAlgorithm::RS256 {
                EncodingKey::from_rsa_pem(&pem)
            } else {
                EncodingKey::from_ec_pem(&pem)
            };
            key.map_err(|e| format!("{} is not a {:?} private key: {e}", path.display(), config.algorithm))?
        }
    };
    jsonwebtoken::encode(&Header::new(algorithm(config.algorithm)), claims, &key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
