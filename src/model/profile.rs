//! Profiles: named bundles of params shared by machines, nestable. The profile named
//! [`GLOBAL_PROFILE`] applies to every machine, after the machine's own profiles.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::machine::{check_params_map, check_profile_list};
use super::object::{Object, ObjectKind};
use super::validate::{check_description, check_name, ValidationError};

/// The profile consulted for every machine after its own profiles.
pub const GLOBAL_PROFILE: &str = "global";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Nested profiles, consulted in order after this profile's own params.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

impl Object for Profile {
    const KIND: ObjectKind = ObjectKind::Profiles;

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
        check_params_map(&self.params)?;
        // Longer cycles (a → b → a) need the other profiles; resolution guards against them.
        check_profile_list("profiles", &self.profiles, Some(&self.name))
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        let mut terms = vec![("name", self.name.clone())];
        terms.extend(self.profiles.iter().map(|p| ("profile", p.clone())));
        terms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};
    use crate::model::validate::code;

    #[test]
    fn profiles_round_trip_keeping_order() {
        let p: Profile = check_ok(
            r#"{"name": "rack1", "params": {"ntp": "10.0.0.1", "x": {"deep": [1, null]}},
                "profiles": ["zeta", "alpha"]}"#,
        );
        assert_eq!(p.profiles, vec!["zeta", "alpha"]);
        assert_eq!(
            p.index_terms(),
            vec![
                ("name", "rack1".to_string()),
                ("profile", "zeta".to_string()),
                ("profile", "alpha".to_string()),
            ]
        );
    }

    #[test]
    fn bad_profiles_are_refused() {
        check_err::<Profile>(
            r#"{"name": "a", "profiles": ["a"]}"#,
            "profiles[0]",
            code::SELF_REFERENCE,
        );
        check_err::<Profile>(
            r#"{"name": "a", "profiles": ["b", "b"]}"#,
            "profiles[1]",
            code::DUPLICATE_PROFILE,
        );
        check_err::<Profile>(r#"{"name": "a b"}"#, "name", code::INVALID_NAME);
        check_err::<Profile>(
            r#"{"name": "a", "params": []}"#,
            "params",
            code::INVALID_TYPE,
        );
        check_err::<Profile>(
            r#"{"name": "a", "parms": {}}"#,
            "parms",
            code::UNKNOWN_FIELD,
        );
        check_err::<Profile>(
            r#"{"name": "a", "params": {"": 1}}"#,
            "params.",
            code::INVALID_NAME,
        );
    }
}
