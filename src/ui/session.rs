//! Dashboard sessions: who is signed in, carried by a short-lived HS256 JWT in an
//! `HttpOnly; SameSite=Strict` cookie, and the CSRF token every dashboard write must
//! carry beside it.
//!
//! The signing key is derived (HMAC-SHA256, with a label of its own) from a secret every
//! node of the cluster already holds — the HS256 JWT secret when `auth.jwt` uses one,
//! else `cluster.secret` — so a session minted by one node is accepted by every other
//! behind the same load balancer, and a session token is never itself a credential the
//! REST API accepts (its key differs from the API's JWT key). A node with neither secret
//! (`raftcron dev`, or a cluster secured by TLS alone with RS256/ES256 tokens) signs with a
//! random key of its own: its sessions end when it restarts and are valid on it alone,
//! which it says once at start.
//!
//! A session lasts [`TTL_S`] and is renewed while used (a page or its live refresh past
//! half its life, so a dashboard left open on a wall display stays signed in), but never
//! beyond [`MAX_LIFETIME_S`] after sign-in, nor the expiry of the JWT it was signed in
//! with. A session signed in with an API key carries a tag of that key (an HMAC of its
//! hash under the session key, so the cookie reveals nothing about the key) and ends as
//! soon as the key is removed, its role changes or another key takes its name — a
//! rotated `RAFTCRON_API_KEY` ends every `admin` session (checked on every request by the
//! caller of [`Sessions::verify`]).
//!
//! Sessions are stateless: signing out deletes the cookie from the browser, but a copy of
//! the token taken before stays valid until its `exp`, and whoever holds a valid token can
//! renew it up to its `cap`. Rotating the key or the secret the session key derives from
//! ends every session at once.
//!
//! This module must never log a session token, a credential or a key.

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::api::auth::{Caller, Credential};
use crate::config::{Config, JwtAlgorithm, Role};

/// The session cookie's name.
pub const COOKIE: &str = "raftcron_session";
/// How long a session lives without being used.
pub const TTL_S: u64 = 15 * 60;
/// How long a session lives at most, however busy: one sign-in is good for a working day.
pub const MAX_LIFETIME_S: u64 = 12 * 60 * 60;
/// The audience of session tokens (the REST API's JWTs never carry it).
const AUDIENCE: &str = "raftcron-dashboard";

/// What a session token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// `true` when signed in with a JWT, `false` with an API key.
    pub jwt: bool,
    /// The session's id: what its CSRF token is derived from.
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
    /// No renewal goes past this: sign-in time plus [`MAX_LIFETIME_S`], or the signed-in
    /// JWT's own `exp` when that comes first.
    #[serde(default)]
    pub cap: u64,
    /// The tag of the API key signed in with ([`Sessions::key_tag`]); empty for a JWT.
    #[serde(default)]
    pub key: String,
    pub aud: String,
}

impl Claims {
    /// The principal the session acts as: the same name, role and idempotency scope as
    /// the credential it was signed in with.
    pub fn caller(&self) -> Caller {
        Caller {
            name: self.sub.clone(),
            role: self.role,
            credential: if self.jwt { Credential::Jwt } else { Credential::ApiKey },
        }
    }
}

/// Mints and checks this node's session tokens.
pub struct Sessions {
    key: [u8; 32],
    /// Whether the key is the cluster's (derived from a shared secret) or this node's own.
    pub shared: bool,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Sessions {
    pub fn new(config: &Config) -> Sessions {
        let jwt_secret = config
            .auth
            .jwt
            .as_ref()
            .filter(|j| j.algorithm == JwtAlgorithm::HS256)
            .and_then(|j| j.hs_secret().ok())
            .filter(|s| !s.is_empty());
        let material = jwt_secret.or_else(|| config.cluster_secret().ok().filter(|s| !s.is_empty()));
        let (key, shared) = match material {
            Some(secret) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
                mac.update(b"raftcron dashboard session key v1");
                (mac.finalize().into_bytes().into(), true)
            }
            None => (rand::random::<[u8; 32]>(), false),
        };
        Sessions::with_key(key, shared)
    }

    fn with_key(key: [u8; 32], shared: bool) -> Sessions {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = 0;
        Sessions {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            key,
            shared,
            validation,
        }
    }

    /// A new session for `caller`, signed in at `now` (Unix seconds) with the API key
    /// whose SHA-256 is `key_hash`, or with a JWT that expires at `jwt_exp`.
    pub fn mint(&self, caller: &Caller, key_hash: Option<&[u8; 32]>, jwt_exp: Option<u64>, now: u64) -> Claims {
        let sid = hex::encode(rand::random::<[u8; 16]>());
        let cap = jwt_exp.map_or(now + MAX_LIFETIME_S, |e| e.min(now + MAX_LIFETIME_S));
        Claims {
            sub: caller.name.clone(),
            role: caller.role,
            jwt: caller.credential == Credential::Jwt,
            sid,
            iat: now,
            exp: cap.min(now + TTL_S),
            cap,
            key: key_hash.map(|h| self.key_tag(h)).unwrap_or_default(),
            aud: AUDIENCE.into(),
        }
    }

    /// The tag a session keeps of the API key it was signed in with: the key's hash
    /// under this cluster's session key, so a session ends when its key is replaced.
    pub fn key_tag(&self, key_hash: &[u8; 32]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"api key\0");
        mac.update(key_hash);
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    pub fn key_tag_matches(&self, claims: &Claims, key_hash: &[u8; 32]) -> bool {
        bool::from(self.key_tag(key_hash).as_bytes().ct_eq(claims.key.as_bytes()))
    }

    /// The renewed claims when `claims` are past half their life and may be extended.
    pub fn renewal(&self, claims: &Claims, now: u64) -> Option<Claims> {
        let exp = claims.cap.min(now + TTL_S);
        (claims.exp.saturating_sub(now) < TTL_S / 2 && exp > claims.exp).then(|| Claims {
            iat: now,
            exp,
            ..claims.clone()
        })
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The claims of a valid, unexpired session token of this cluster.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| format!("session is not valid: {e}"))
    }

    /// The CSRF token of session `sid`: a dashboard form carries it, and a write whose
    /// token differs from its session's is refused.
    pub fn csrf(&self, sid: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"csrf\0");
        mac.update(sid.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    pub fn csrf_matches(&self, sid: &str, given: &str) -> bool {
        bool::from(self.csrf(sid).as_bytes().ct_eq(given.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [9; 32];

    fn caller(credential: Credential) -> Caller {
        Caller { name: "ops".into(), role: Role::Operator, credential }
    }

    fn config(secret: &str) -> Config {
        let sets = [
            "node.id=1".to_string(),
            "node.data_dir=\"/nonexistent\"".to_string(),
            format!("cluster.secret=\"{secret}\""),
            "cluster.insecure=true".to_string(),
        ];
        Config::load(None, &Default::default(), &sets).expect("a config")
    }

    #[test]
    fn a_session_verifies_on_every_node_holding_the_same_secret_and_nowhere_else() {
        let mut config = config("a-shared-cluster-secret-of-some-length");
        let (a, b) = (Sessions::new(&config), Sessions::new(&config));
        assert!(a.shared);
        let now = chrono::Utc::now().timestamp() as u64;
        let token = a.sign(&a.mint(&caller(Credential::ApiKey), Some(&KEY), None, now));
        let claims = b.verify(&token).expect("another node of the cluster accepts it");
        assert_eq!((claims.sub.as_str(), claims.role, claims.jwt), ("ops", Role::Operator, false));
        config.cluster.secret = "another-cluster-with-another-secret".into();
        assert!(Sessions::new(&config).verify(&token).is_err());
        // No shared secret: a key of the node's own.
        let lone = Sessions::new(&self::config(""));
        assert!(!lone.shared && lone.verify(&token).is_err());
    }

    #[test]
    fn a_session_never_outlives_the_token_it_was_signed_in_with() {
        let s = Sessions::with_key([7; 32], true);
        let now = 1_000_000;
        let claims = s.mint(&caller(Credential::Jwt), None, Some(now + 60), now);
        assert_eq!(claims.exp, now + 60);
        assert!(s.renewal(&claims, now + 30).is_none(), "cannot be extended past the token");
        let long = s.mint(&caller(Credential::ApiKey), Some(&KEY), None, now);
        assert!(s.renewal(&long, now + 60).is_none(), "too young to renew");
        let renewed = s.renewal(&long, now + TTL_S - 60).expect("renewed past half its life");
        assert_eq!((renewed.exp, renewed.sid.as_str()), (now + 2 * TTL_S - 60, long.sid.as_str()));
    }

    #[test]
    fn a_session_used_without_pause_still_ends_at_its_absolute_lifetime() {
        let s = Sessions::with_key([7; 32], true);
        let start = 1_000_000;
        let mut claims = s.mint(&caller(Credential::ApiKey), Some(&KEY), None, start);
        // The live refresh asks every 2 s: renew whenever it may.
        let mut now = start;
        while let Some(next) = s.renewal(&claims, now).or_else(|| (now < claims.exp).then(|| claims.clone())) {
            claims = next;
            now += 60;
            assert!(now < start + MAX_LIFETIME_S + TTL_S, "renewed past its lifetime");
        }
        assert_eq!(claims.exp, start + MAX_LIFETIME_S);
    }

    #[test]
    fn a_session_names_its_api_key_by_a_tag_that_a_rotated_key_does_not_match() {
        let s = Sessions::with_key([5; 32], true);
        let claims = s.mint(&caller(Credential::ApiKey), Some(&KEY), None, 1_000);
        assert!(s.key_tag_matches(&claims, &KEY));
        assert!(!s.key_tag_matches(&claims, &[8; 32]), "a new key under the same name");
        assert!(!claims.key.contains(&hex::encode(&KEY[..4])), "the tag is not the key's hash");
        let jwt = s.mint(&caller(Credential::Jwt), None, Some(2_000), 1_000);
        assert!(jwt.key.is_empty() && !s.key_tag_matches(&jwt, &KEY));
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_refused() {
        let s = Sessions::with_key([1; 32], true);
        let old = s.mint(&caller(Credential::ApiKey), Some(&KEY), None, 1_000);
        assert!(s.verify(&s.sign(&old)).unwrap_err().contains("xpired"));
        let now = chrono::Utc::now().timestamp() as u64;
        let mut claims = s.mint(&caller(Credential::ApiKey), Some(&KEY), None, now);
        assert!(Sessions::with_key([2; 32], true).verify(&s.sign(&claims)).is_err(), "another key");
        claims.aud = "raftcron".into();
        assert!(s.verify(&s.sign(&claims)).is_err(), "an API token's audience is not a session's");
    }

    #[test]
    fn the_csrf_token_is_bound_to_its_session() {
        let s = Sessions::with_key([3; 32], true);
        let t = s.csrf("session-a");
        assert!(s.csrf_matches("session-a", &t));
        assert!(
            !s.csrf_matches("session-b", &t)
                && !s.csrf_matches("session-a", "")
                && !s.csrf_matches("session-a", &t[1..])
        );
    }
}
