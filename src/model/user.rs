//! Users: people and automation that log in to the API. The stored form holds the password hash;
//! what the API shows is [`UserView`], which cannot hold one.

use serde::{Deserialize, Serialize};

use super::object::{Object, ObjectKind};
use super::validate::{check_description, check_name, code, ValidationError};

// The stored form. Never serialize this to an API client: use `User::redacted`. (The doc
// comment below is the OpenAPI text.)
/// A user who can log in to the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// PHC string (`$argon2id$v=19$…`). Empty means password login is disabled for this user
    /// (tokens only).
    #[serde(default)]
    pub password_hash: String,
    #[serde(default)]
    pub admin: bool,
    /// Set by the server; ignored on input. The revision at which this user was created or its
    /// password or admin right last changed. A token is valid only while its user's generation
    /// is the one it was issued under, so a password change, a demotion or a delete (and a new
    /// user of the same name) ends every earlier token.
    #[serde(default)]
    #[schema(read_only)]
    pub generation: u64,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

/// A user as the API shows it: everything but the hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserView {
    pub name: String,
    pub description: String,
    pub admin: bool,
    /// Whether password login is possible.
    pub has_password: bool,
    #[schema(read_only)]
    pub revision: u64,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        UserView {
            name: user.name.clone(),
            description: user.description.clone(),
            admin: user.admin,
            has_password: !user.password_hash.is_empty(),
            revision: user.revision,
        }
    }
}

impl User {
    /// The user as the API shows it.
    pub fn redacted(&self) -> UserView {
        UserView::from(self)
    }
}

/// Shape check of a PHC string (`$id[$param=v,…][$salt[$hash]]`), enough to refuse a plaintext
/// password pasted into the hash field. Whether the hash verifies is the auth code's business.
fn check_phc(value: &str) -> Result<(), ValidationError> {
    let err = || {
        ValidationError::new(
            "password_hash",
            code::INVALID_PASSWORD_HASH,
            "not a PHC hash string ($id$...)",
        )
    };
    let rest = value.strip_prefix('$').ok_or_else(err)?;
    let mut fields = rest.split('$');
    let id = fields.next().unwrap_or_default();
    let id_ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let rest_ok = fields.all(|f| {
        !f.is_empty()
            && f.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/+.=,-".contains(&b))
    });
    if id_ok && rest_ok && value.len() <= 1024 {
        Ok(())
    } else {
        Err(err())
    }
}

impl Object for User {
    const KIND: ObjectKind = ObjectKind::Users;

    fn key(&self) -> String {
        self.name.clone()
    }

    fn revision(&self) -> u64 {
        self.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn validate(&mut self) -> Result<(), ValidationError> {
        check_name("name", &self.name)?;
        check_description(&self.description)?;
        if !self.password_hash.is_empty() {
            check_phc(&self.password_hash)?;
        }
        Ok(())
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("admin", self.admin.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    #[test]
    fn users_round_trip_and_redact() {
        let u: User = check_ok(&format!(
            r#"{{"name": "admin", "password_hash": "{HASH}", "admin": true}}"#
        ));
        let view = u.redacted();
        assert!(view.has_password && view.admin);
        let shown = serde_json::to_string(&view).unwrap();
        assert!(!shown.contains("argon2"), "{shown}");
        let u: User = check_ok(r#"{"name": "robot"}"#);
        assert!(!u.redacted().has_password);
    }

    #[test]
    fn bad_users_are_refused() {
        check_err::<User>(
            r#"{"name": "u", "password_hash": "hunter2"}"#,
            "password_hash",
            code::INVALID_PASSWORD_HASH,
        );
        check_err::<User>(
            r#"{"name": "u", "password_hash": "$$"}"#,
            "password_hash",
            code::INVALID_PASSWORD_HASH,
        );
        check_err::<User>(
            r#"{"name": "u", "password_hash": "$argon2id$v=19$a b"}"#,
            "password_hash",
            code::INVALID_PASSWORD_HASH,
        );
        check_err::<User>(
            r#"{"name": "u", "password": "x"}"#,
            "password",
            code::UNKNOWN_FIELD,
        );
        check_err::<User>(r#"{"name": "u", "admin": 1}"#, "admin", code::INVALID_TYPE);
        check_err::<User>(r#"{"name": "u/v"}"#, "name", code::INVALID_NAME);
    }
}
