//! What every stored kind has in common: its [`ObjectKind`] and the [`Object`] trait the store, the
//! API and the state machine program against.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::validate::ValidationError;

/// The kinds of stored object. The serde form and [`ObjectKind::as_str`] are the plural URL
/// segment (`/api/v3/machines`), so one spelling serves URLs, token scopes and events.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Machines,
    Profiles,
    Params,
    Bootenvs,
    Templates,
    Subnets,
    Reservations,
    Leases,
    Users,
    Tokens,
    Prefs,
}

impl ObjectKind {
    pub const ALL: &'static [ObjectKind] = &[
        ObjectKind::Machines,
        ObjectKind::Profiles,
        ObjectKind::Params,
        ObjectKind::Bootenvs,
        ObjectKind::Templates,
        ObjectKind::Subnets,
        ObjectKind::Reservations,
        ObjectKind::Leases,
        ObjectKind::Users,
        ObjectKind::Tokens,
        ObjectKind::Prefs,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Machines => "machines",
            ObjectKind::Profiles => "profiles",
            ObjectKind::Params => "params",
            ObjectKind::Bootenvs => "bootenvs",
            ObjectKind::Templates => "templates",
            ObjectKind::Subnets => "subnets",
            ObjectKind::Reservations => "reservations",
            ObjectKind::Leases => "leases",
            ObjectKind::Users => "users",
            ObjectKind::Tokens => "tokens",
            ObjectKind::Prefs => "prefs",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ObjectKind {
    /// The top-level fields of this kind's JSON form, from its schema, so
    /// list filters and sorts can refuse a field the kind does not have.
    pub fn field_names(self) -> &'static [String] {
        use std::collections::BTreeMap;
        use std::sync::OnceLock;
        static FIELDS: OnceLock<BTreeMap<ObjectKind, Vec<String>>> = OnceLock::new();
        let all = FIELDS.get_or_init(|| {
            ObjectKind::ALL
                .iter()
                .map(|&kind| (kind, super::schema_fields(kind)))
                .collect()
        });
        all.get(&self).map_or(&[], Vec::as_slice)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown object kind {0:?}")]
pub struct UnknownKind(pub String);

impl FromStr for ObjectKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObjectKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// A stored, replicated object.
///
/// The contract the store relies on:
/// - [`Object::key`] is unique within the kind and never changes for the life of the object
///   (renaming is delete + create);
/// - [`Object::validate`] is deterministic (no clock, no randomness, no lookups of other
///   objects), so it may run both in the API and inside the state machine's apply, and gives the
///   same answer on every replica; checks that need other objects (does the bootenv exist? does a
///   param value match its definition?) belong to the store;
/// - the revision is owned by the server: whatever a client sends is overwritten with the
///   replicated revision counter before the object is stored.
pub trait Object:
    Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    const KIND: ObjectKind;

    /// The object's identity within its kind (and its URL segment).
    fn key(&self) -> String;

    fn revision(&self) -> u64;

    fn set_revision(&mut self, revision: u64);

    /// Normalizes in place (MACs to lowercase colon form; lists whose order means nothing sorted
    /// and deduplicated; never `profiles`, whose order is the param lookup order), then checks
    /// every field. Returns the first problem found.
    fn validate(&mut self) -> Result<(), ValidationError>;

    /// `(index, value)` pairs the store indexes for list filters (`?mac=…&bootenv=…`). A field
    /// holding a list yields one pair per element. Values are in their normalized form.
    fn index_terms(&self) -> Vec<(&'static str, String)>;

    /// `(index, value)` pairs that must be unique across all objects of the kind, beyond the key
    /// (e.g. a MAC address can belong to only one machine). The store refuses a write that would
    /// make two objects share one.
    fn unique_terms(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_str_and_serde() {
        for &kind in ObjectKind::ALL {
            assert_eq!(kind.as_str().parse::<ObjectKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<ObjectKind>(&json).unwrap(), kind);
        }
        assert_eq!(
            "machine".parse::<ObjectKind>(),
            Err(UnknownKind("machine".into()))
        );
        assert!(serde_json::from_str::<ObjectKind>("\"Machines\"").is_err());
    }
}
