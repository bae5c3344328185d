//! Records that commands carry into the log, owned by the store rather than
//! by the API: the API's types may gain fields, a log entry's meaning may
//! not. None of them refuses an unknown field, so an entry written by a
//! later build of the same format still decodes (what a field means is
//! fixed by the entry's format, see `frames`).

use serde::{Deserialize, Serialize};

use crate::model::User;

/// The first admin user, as the bootstrap command carries it: only what the
/// proposer decides (the hash, made with a random salt). Apply makes it an
/// admin and sets its revision and generation.
///
/// Entries written before this type existed carried the whole model user;
/// its other fields (`admin: true`, zero revision and generation) are the
/// ones apply sets anyway, so they decode to the same user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapAdmin {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub password_hash: String,
}

impl BootstrapAdmin {
    /// The user apply stores.
    pub fn to_user(&self) -> User {
        User {
            name: self.name.clone(),
            description: self.description.clone(),
            password_hash: self.password_hash.clone(),
            admin: true,
            generation: 0,
            revision: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_of_earlier_bootstrap_entries_still_decodes() {
        // As earlier builds wrote it: the whole model user.
        let old = r#"{"name":"admin","description":"Created on first start",
            "password_hash":"$argon2id$x","admin":true,"generation":0,"revision":0}"#;
        let admin: BootstrapAdmin = serde_json::from_str(old).unwrap();
        assert_eq!(admin.to_user().password_hash, "$argon2id$x");
        assert!(admin.to_user().admin);
        // A field a later build adds does not make it undecodable.
        let later = r#"{"name":"admin","password_hash":"$argon2id$x","shell":"/bin/sh"}"#;
        assert!(serde_json::from_str::<BootstrapAdmin>(later).is_ok());
    }
}
