//! Every way a token is refused, for each algorithm, and the ones that pass.

use std::path::PathBuf;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn config(algorithm: JwtAlgorithm) -> JwtConfig {
    let public = match algorithm {
        JwtAlgorithm::HS256 => None,
        JwtAlgorithm::RS256 => Some(fixture("rs256-public.pem")),
        JwtAlgorithm::ES256 => Some(fixture("es256-public.pem")),
    };
    JwtConfig {
        algorithm,
        secret: if algorithm == JwtAlgorithm::HS256 { SECRET.into() } else { String::new() },
        secret_file: None,
        public_key_file: public,
        issuer: Some("raftcron-test".into()),
        audience: Some("raftcron".into()),
        leeway_s: 5,
    }
}

fn private(algorithm: JwtAlgorithm) -> Option<PathBuf> {
    match algorithm {
        JwtAlgorithm::HS256 => None,
        JwtAlgorithm::RS256 => Some(fixture("rs256-private.pem")),
        JwtAlgorithm::ES256 => Some(fixture("es256-private.pem")),
    }
}

fn claims() -> Claims {
    Claims {
        sub: "alice".into(),
        role: Role::Operator,
        exp: now() + 600,
        nbf: Some(now() - 10),
        iat: Some(now()),
        iss: Some("raftcron-test".into()),
        aud: Some(json!("raftcron")),
    }
}

const ALL: [JwtAlgorithm; 3] = [JwtAlgorithm::HS256, JwtAlgorithm::RS256, JwtAlgorithm::ES256];

#[test]
fn a_token_minted_for_the_configuration_verifies() {
    for a in ALL {
        let cfg = config(a);
        let token = mint(&cfg, &claims(), private(a).as_deref()).unwrap();
        let got = Verifier::new(&cfg).unwrap().verify(&token).unwrap();
        assert_eq!((got.sub.as_str(), got.role), ("alice", Role::Operator), "{a:?}");
    }
}

fn refused(a: JwtAlgorithm, c: &Claims, needle: &str) {
    let cfg = config(a);
    let token = mint(&cfg, c, private(a).as_deref()).unwrap();
    let err = Verifier::new(&cfg).unwrap().verify(&token).unwrap_err();
    assert!(err.contains(needle), "{a:?}: {err:?} should say {needle:?}");
}

#[test]
fn expired_not_yet_valid_and_foreign_tokens_are_refused() {
    for a in ALL {
        refused(a, &Claims { exp: now() - 60, ..claims() }, "expired");
        refused(a, &Claims { nbf: Some(now() + 60), ..claims() }, "not valid yet");
        refused(a, &Claims { iss: Some("someone-else".into()), ..claims() }, "issuer");
        refused(a, &Claims { iss: None, ..claims() }, "iss");
        refused(a, &Claims { aud: Some(json!("another-service")), ..claims() }, "audience");
        refused(a, &Claims { aud: None, ..claims() }, "aud");
    }
}

#[test]
fn the_leeway_covers_small_skew_only() {
    // Expired 3 s ago with 5 s of leeway: still accepted.
    let cfg = config(JwtAlgorithm::HS256);
    let token = mint(&cfg, &Claims { exp: now() - 3, ..claims() }, None).unwrap();
    assert!(Verifier::new(&cfg).unwrap().verify(&token).is_ok());
}

#[test]
fn a_token_without_exp_is_refused() {
    let cfg = config(JwtAlgorithm::HS256);
    let body = json!({"sub": "alice", "role": "admin", "iss": "raftcron-test", "aud": "raftcron"});
    let token = jsonwebtoken::encode(&Header::default(), &body, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    let err = Verifier::new(&cfg).unwrap().verify(&token).unwrap_err();
    assert!(err.contains("exp"), "{err}");
}

#[test]
fn a_bad_signature_is_refused() {
    for a in ALL {
        let cfg = config(a);
        let token = mint(&cfg, &claims(), private(a).as_deref()).unwrap();
        // Another claim set's signature on these claims.
        let other = mint(&cfg, &Claims { sub: "mallory".into(), ..claims() }, private(a).as_deref()).unwrap();
        let forged = format!("{}.{}", token.rsplit_once('.').unwrap().0, other.rsplit_once('.').unwrap().1);
        let err = Verifier::new(&cfg).unwrap().verify(&forged).unwrap_err();
        assert!(err.contains("signature"), "{a:?}: {err}");
    }
    // HS256 with another secret.
    let mut other = config(JwtAlgorithm::HS256);
    other.secret = "another-secret-another-secret-0123".into();
    let token = mint(&other, &claims(), None).unwrap();
    let err = Verifier::new(&config(JwtAlgorithm::HS256)).unwrap().verify(&token).unwrap_err();
    assert!(err.contains("signature"), "{err}");
}

/// `alg: none`, and HS256 keyed with the node's own public key (the classic confusion
/// attack): the algorithm is the configuration's, never the token's.
#[test]
fn the_tokens_own_algorithm_is_never_trusted() {
    use base64::Engine;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims_json = serde_json::to_value(claims()).unwrap();
    let none = format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims_json.clone()));
    for a in ALL {
        let err = Verifier::new(&config(a)).unwrap().verify(&none).unwrap_err();
        assert!(err.contains("algorithm") || err.contains("malformed"), "{a:?}: {err}");
    }
    for (a, public) in [(JwtAlgorithm::RS256, "rs256-public.pem"), (JwtAlgorithm::ES256, "es256-public.pem")] {
        let pem = std::fs::read(fixture(public)).unwrap();
        let token = jsonwebtoken::encode(&Header::default(), &claims_json, &EncodingKey::from_secret(&pem)).unwrap();
        let err = Verifier::new(&config(a)).unwrap().verify(&token).unwrap_err();
        assert!(err.contains("algorithm refused"), "{a:?}: {err}");
    }
    // And an RS256 token at an HS256 node.
    let rs = mint(&config(JwtAlgorithm::RS256), &claims(), private(JwtAlgorithm::RS256).as_deref()).unwrap();
    let err = Verifier::new(&config(JwtAlgorithm::HS256)).unwrap().verify(&rs).unwrap_err();
    assert!(err.contains("algorithm refused"), "{err}");
}

#[test]
fn garbage_is_refused_with_a_message() {
    let v = Verifier::new(&config(JwtAlgorithm::HS256)).unwrap();
    for t in ["a.b.c", "..", "eyJhbGciOiJIUzI1NiJ9.e30.x"] {
        assert!(v.verify(t).is_err(), "{t}");
    }
}
