//! Who may do what: password hashing, bearer tokens and scope checks.
//!
//! Passwords are stored as argon2id PHC strings. A bearer token is a JWT
//! (HS256) signed with a key held in the replicated state, so every member can
//! verify any token; its id is also recorded as a `TokenInfo` object so it
//! can be listed and revoked.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::model::{ObjectKind, Scope, ScopeLevel};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("token is malformed or its signature is wrong")]
    BadToken,
    #[error("token has expired")]
    Expired,
    #[error("token signing failed: {0}")]
    Sign(String),
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a stored PHC string. A malformed stored hash
/// never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// What a bearer token carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Token id (`TokenInfo.id`), checked against the revocation state.
    pub jti: String,
    /// User name.
    pub sub: String,
    pub scope: Scope,
    pub iat: u64,
    pub exp: u64,
}

pub fn sign(claims: &Claims, key: &[u8]) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
    .map_err(|e| AuthError::Sign(e.to_string()))
}

/// Verifies signature and expiry against `now_unix`.
pub fn verify(token: &str, key: &[u8], now_unix: u64) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked below against the caller's clock so tests can move it.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &validation)
        .map_err(|_| AuthError::BadToken)?;
    if data.claims.exp <= now_unix {
        return Err(AuthError::Expired);
    }
    Ok(data.claims)
}

/// A fresh random secret, hex-encoded.
pub fn random_secret(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Does `scope` allow an operation needing `level` on `kind`/`object`?
pub fn allows(
    scope: &Scope,
    level: ScopeLevel,
    kind: Option<ObjectKind>,
    object: Option<&str>,
) -> bool {
    if scope.level < level {
        return false;
    }
    if let Some(limit) = scope.kind {
        if kind != Some(limit) {
            return false;
        }
    }
    if let Some(limit) = &scope.object {
        if object != Some(limit.as_str()) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            jti: "t1".into(),
            sub: "admin".into(),
            scope: Scope {
                level: ScopeLevel::Write,
                kind: None,
                object: None,
            },
            iat: 100,
            exp,
        }
    }

    #[test]
    fn password_round_trip() {
        let phc = hash_password("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("s3cret", "garbage"));
    }

    #[test]
    fn token_signature_and_expiry() {
        let token = sign(&claims(200), b"key").unwrap();
        assert_eq!(verify(&token, b"key", 150).unwrap(), claims(200));
        assert!(matches!(
            verify(&token, b"key", 200),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            verify(&token, b"other", 150),
            Err(AuthError::BadToken)
        ));
        assert!(matches!(
            verify("a.b.c", b"key", 150),
            Err(AuthError::BadToken)
        ));
        assert!(matches!(verify("", b"key", 150), Err(AuthError::BadToken)));
    }

    #[test]
    fn scope_levels_and_limits() {
        let write = claims(1).scope;
        assert!(allows(
            &write,
            ScopeLevel::Read,
            Some(ObjectKind::Machines),
            None
        ));
        assert!(!allows(&write, ScopeLevel::Admin, None, None));
        let limited = Scope {
            level: ScopeLevel::Write,
            kind: Some(ObjectKind::Machines),
            object: Some("m1".into()),
        };
        assert!(allows(
            &limited,
            ScopeLevel::Write,
            Some(ObjectKind::Machines),
            Some("m1")
        ));
        assert!(!allows(
            &limited,
            ScopeLevel::Write,
            Some(ObjectKind::Machines),
            Some("m2")
        ));
        assert!(!allows(
            &limited,
            ScopeLevel::Read,
            Some(ObjectKind::Profiles),
            None
        ));
    }
}
