//! Issued API tokens: who holds them, what they may do, until when. The token secret is not here
//! (the bearer token is signed and names this record's `id`); the record lets a token be listed
//! and revoked before it expires.

use serde::{Deserialize, Serialize};

use super::object::{Object, ObjectKind};
use super::validate::{check_description, check_len, check_name, code, ValidationError};

/// What a token may do. Ordered: `Admin` ≥ `Write` ≥ `Read`, so a check is `granted >= needed`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ScopeLevel {
    #[default]
    Read,
    Write,
    Admin,
}

/// A token's reach: a level, optionally narrowed to one kind, and optionally to one object of it
/// (a machine's own token is `write` on `machines` / its UUID).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub level: ScopeLevel,
    #[serde(default)]
    pub kind: Option<ObjectKind>,
    /// Key of the one object allowed; requires `kind`.
    #[serde(default)]
    pub object: Option<String>,
}

impl Scope {
    /// Whether this scope grants `needed` on `kind`, for the object keyed `object` (`None` for a
    /// request about the whole kind, such as a list or a create, which an object-scoped token
    /// may not make).
    pub fn allows(&self, needed: ScopeLevel, kind: ObjectKind, object: Option<&str>) -> bool {
        self.level >= needed
            && self.kind.is_none_or(|k| k == kind)
            && match &self.object {
                None => true,
                Some(mine) => object == Some(mine.as_str()),
            }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInfo {
    pub id: String,
    /// The user the token acts for.
    pub user: String,
    pub scope: Scope,
    pub created_at_unix: u64,
    pub expires_at_unix: u64,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub description: String,
    /// The user's `generation` when the token was issued; the token is refused once the user's
    /// generation moves on.
    #[serde(default)]
    #[schema(read_only)]
    pub user_generation: u64,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

/// The index term of an expiry time: zero-padded, so the index lists tokens in expiry order and
/// purging expired records reads only those.
pub fn expiry_term(unix: u64) -> String {
    format!("{unix:020}")
}

impl TokenInfo {
    /// Whether the token may be used at `now_unix`.
    pub fn is_active(&self, now_unix: u64) -> bool {
        !self.revoked && now_unix < self.expires_at_unix
    }
}

impl Object for TokenInfo {
    const KIND: ObjectKind = ObjectKind::Tokens;

    fn key(&self) -> String {
        self.id.clone()
    }

    fn revision(&self) -> u64 {
        self.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn validate(&mut self) -> Result<(), ValidationError> {
        check_name("id", &self.id)?;
        check_name("user", &self.user)?;
        if let Some(object) = &self.scope.object {
            if self.scope.kind.is_none() {
                return Err(ValidationError::new(
                    "scope.object",
                    code::INVALID_SCOPE,
                    "an object scope needs a kind",
                ));
            }
            // Object keys are names, UUIDs or addresses: all URL segments.
            if object.is_empty()
                || object
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '/')
            {
                return Err(ValidationError::new(
                    "scope.object",
                    code::INVALID_SCOPE,
                    format!("{object:?} is not an object key"),
                ));
            }
            check_len("scope.object", object, 253)?;
        }
        // Every token expires: a token without an end is a credential nobody will remember.
        if self.expires_at_unix <= self.created_at_unix {
            return Err(ValidationError::new(
                "expires_at_unix",
                code::INVALID_EXPIRY,
                "a token must expire after it is created",
            ));
        }
        check_description(&self.description)
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        vec![
            ("user", self.user.clone()),
            ("revoked", self.revoked.to_string()),
            ("expires_at_unix", expiry_term(self.expires_at_unix)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};

    #[test]
    fn tokens_round_trip() {
        let t: TokenInfo = check_ok(
            r#"{"id": "tok-1", "user": "admin", "created_at_unix": 100, "expires_at_unix": 200,
                "scope": {"level": "write", "kind": "machines", "object": "3f2504e0-4f89-41d3-9a0c-0305e82c3301"}}"#,
        );
        assert!(t.is_active(150));
        assert!(!t.is_active(200));
        assert_eq!(t.index_terms()[0], ("user", "admin".to_string()));
    }

    #[test]
    fn levels_are_ordered_and_scopes_narrow() {
        assert!(ScopeLevel::Admin > ScopeLevel::Write && ScopeLevel::Write > ScopeLevel::Read);
        let admin = Scope {
            level: ScopeLevel::Admin,
            ..Scope::default()
        };
        assert!(admin.allows(ScopeLevel::Write, ObjectKind::Subnets, None));
        let machine = Scope {
            level: ScopeLevel::Write,
            kind: Some(ObjectKind::Machines),
            object: Some("m1".into()),
        };
        assert!(machine.allows(ScopeLevel::Read, ObjectKind::Machines, Some("m1")));
        assert!(!machine.allows(ScopeLevel::Read, ObjectKind::Machines, Some("m2")));
        assert!(!machine.allows(ScopeLevel::Read, ObjectKind::Machines, None));
        assert!(!machine.allows(ScopeLevel::Read, ObjectKind::Profiles, Some("m1")));
        assert!(!machine.allows(ScopeLevel::Admin, ObjectKind::Machines, Some("m1")));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let base = r#""id": "t", "user": "u", "created_at_unix": 100"#;
        check_err::<TokenInfo>(
            &format!(r#"{{{base}, "expires_at_unix": 100, "scope": {{"level": "read"}}}}"#),
            "expires_at_unix",
            code::INVALID_EXPIRY,
        );
        check_err::<TokenInfo>(
            &format!(
                r#"{{{base}, "expires_at_unix": 200, "scope": {{"level": "read", "object": "x"}}}}"#
            ),
            "scope.object",
            code::INVALID_SCOPE,
        );
        check_err::<TokenInfo>(
            &format!(
                r#"{{{base}, "expires_at_unix": 200, "scope": {{"level": "read", "kind": "machines", "object": "a/b"}}}}"#
            ),
            "scope.object",
            code::INVALID_SCOPE,
        );
        check_err::<TokenInfo>(
            &format!(r#"{{{base}, "expires_at_unix": 200, "scope": {{"level": "root"}}}}"#),
            "scope.level",
            code::INVALID_VALUE,
        );
        check_err::<TokenInfo>(
            &format!(
                r#"{{{base}, "expires_at_unix": 200, "scope": {{"level": "read", "kind": "machine"}}}}"#
            ),
            "scope.kind",
            code::INVALID_VALUE,
        );
        check_err::<TokenInfo>(
            &format!(r#"{{{base}, "expires_at_unix": 200}}"#),
            "scope",
            code::MISSING_FIELD,
        );
    }
}
