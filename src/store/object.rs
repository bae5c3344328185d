//! One value of any object kind, so the store can decode, validate, index and
//! check references of every kind through one type.

use serde_json::Value;

use crate::error_code as code;
use crate::model::{
    decode_value, BootEnv, Lease, Machine, Object, ObjectKind, Param, Prefs, Profile, Reservation,
    Subnet, Template, TokenInfo, User, ValidationError,
};

use super::command::Rejection;

fn rejection(e: ValidationError) -> Rejection {
    Rejection::new(e.code, e.message.clone()).at(e.field.clone())
}

#[derive(Debug, Clone, PartialEq)]
pub enum AnyObject {
    Machine(Machine),
    Profile(Profile),
    Param(Param),
    BootEnv(BootEnv),
    Template(Template),
    Subnet(Subnet),
    Reservation(Reservation),
    Lease(Lease),
    User(User),
    Token(TokenInfo),
    Prefs(Prefs),
}

macro_rules! each {
    ($self:expr, $obj:ident => $body:expr) => {
        match $self {
            AnyObject::Machine($obj) => $body,
            AnyObject::Profile($obj) => $body,
            AnyObject::Param($obj) => $body,
            AnyObject::BootEnv($obj) => $body,
            AnyObject::Template($obj) => $body,
            AnyObject::Subnet($obj) => $body,
            AnyObject::Reservation($obj) => $body,
            AnyObject::Lease($obj) => $body,
            AnyObject::User($obj) => $body,
            AnyObject::Token($obj) => $body,
            AnyObject::Prefs($obj) => $body,
        }
    };
}

/// Builds the variant for `kind` from `$typed($value)?`.
macro_rules! by_kind {
    ($kind:expr, $typed:ident, $value:expr) => {
        match $kind {
            ObjectKind::Machines => AnyObject::Machine($typed($value)?),
            ObjectKind::Profiles => AnyObject::Profile($typed($value)?),
            ObjectKind::Params => AnyObject::Param($typed($value)?),
            ObjectKind::Bootenvs => AnyObject::BootEnv($typed($value)?),
            ObjectKind::Templates => AnyObject::Template($typed($value)?),
            ObjectKind::Subnets => AnyObject::Subnet($typed($value)?),
            ObjectKind::Reservations => AnyObject::Reservation($typed($value)?),
            ObjectKind::Leases => AnyObject::Lease($typed($value)?),
            ObjectKind::Users => AnyObject::User($typed($value)?),
            ObjectKind::Tokens => AnyObject::Token($typed($value)?),
            ObjectKind::Prefs => AnyObject::Prefs($typed($value)?),
        }
    };
}

/// A field other objects point at, and who points at it.
pub struct Reference {
    pub kind: ObjectKind,
    pub key: String,
    pub field: &'static str,
}

impl AnyObject {
    /// Decodes a client's JSON for `kind`, rejecting unknown fields and wrong
    /// types, then normalizes and validates it.
    pub fn decode(kind: ObjectKind, value: Value) -> Result<Self, Rejection> {
        fn typed<T: Object>(value: Value) -> Result<T, Rejection> {
            // The direct conversion is the common, cheap path; only when it
            // fails is the text decoded again for an error naming the field.
            let mut object: T = match T::deserialize(&value) {
                Ok(object) => object,
                Err(_) => decode_value(&value).map_err(rejection)?,
            };
            object.validate().map_err(rejection)?;
            Ok(object)
        }
        Ok(by_kind!(kind, typed, value))
    }

    /// Decodes an object this store wrote itself: it was validated then, so
    /// it is not validated again (template checks are not free).
    pub fn decode_stored(kind: ObjectKind, value: Value) -> Result<Self, Rejection> {
        fn typed<T: Object>(value: Value) -> Result<T, Rejection> {
            serde_json::from_value(value)
                .map_err(|e| Rejection::new(code::INTERNAL, format!("corrupt stored object: {e}")))
        }
        Ok(by_kind!(kind, typed, value))
    }

    pub fn kind(&self) -> ObjectKind {
        match self {
            AnyObject::Machine(_) => ObjectKind::Machines,
            AnyObject::Profile(_) => ObjectKind::Profiles,
            AnyObject::Param(_) => ObjectKind::Params,
            AnyObject::BootEnv(_) => ObjectKind::Bootenvs,
            AnyObject::Template(_) => ObjectKind::Templates,
            AnyObject::Subnet(_) => ObjectKind::Subnets,
            AnyObject::Reservation(_) => ObjectKind::Reservations,
            AnyObject::Lease(_) => ObjectKind::Leases,
            AnyObject::User(_) => ObjectKind::Users,
            AnyObject::Token(_) => ObjectKind::Tokens,
            AnyObject::Prefs(_) => ObjectKind::Prefs,
        }
    }

    pub fn key(&self) -> String {
        each!(self, o => o.key())
    }

    pub fn revision(&self) -> u64 {
        each!(self, o => o.revision())
    }

    pub fn set_revision(&mut self, revision: u64) {
        each!(self, o => o.set_revision(revision))
    }

    pub fn to_value(&self) -> Result<Value, Rejection> {
        each!(self, o => serde_json::to_value(o))
            .map_err(|e| Rejection::new(code::INTERNAL, format!("encoding object: {e}")))
    }

    /// Indexed fields: list filters use them, and deletes use them to find
    /// who still refers to an object.
    pub fn index_terms(&self) -> Vec<(&'static str, String)> {
        let mut terms = each!(self, o => o.index_terms());
        terms.sort();
        terms.dedup();
        terms
    }

    /// Fields no two objects of the kind may share (besides the key).
    pub fn unique_terms(&self) -> Vec<(&'static str, String)> {
        each!(self, o => o.unique_terms())
    }

    /// Objects this one names, which must exist.
    pub fn references(&self) -> Vec<Reference> {
        let reference = |kind, key: &str, field| Reference {
            kind,
            key: key.to_string(),
            field,
        };
        match self {
            AnyObject::Machine(m) => {
                let mut refs: Vec<_> = m
                    .profiles
                    .iter()
                    .map(|p| reference(ObjectKind::Profiles, p, "profiles"))
                    .collect();
                if !m.bootenv.is_empty() {
                    refs.push(reference(ObjectKind::Bootenvs, &m.bootenv, "bootenv"));
                }
                refs
            }
            AnyObject::Profile(p) => p
                .profiles
                .iter()
                .map(|n| reference(ObjectKind::Profiles, n, "profiles"))
                .collect(),
            AnyObject::BootEnv(b) => b
                .templates
                .iter()
                .filter_map(|t| t.template_id.as_deref())
                .map(|id| reference(ObjectKind::Templates, id, "templates"))
                .collect(),
            AnyObject::Reservation(r) => {
                vec![reference(ObjectKind::Subnets, &r.subnet, "subnet")]
            }
            AnyObject::Token(t) => vec![reference(ObjectKind::Users, &t.user, "user")],
            _ => Vec::new(),
        }
    }

    /// Param values this object sets, checked against their definitions.
    pub fn param_values(&self) -> Option<&std::collections::BTreeMap<String, Value>> {
        match self {
            AnyObject::Machine(m) => Some(&m.params),
            AnyObject::Profile(p) => Some(&p.params),
            _ => None,
        }
    }
}

/// For a deleted object of `kind`, the (kind, index field) pairs whose
/// entries would point at it.
pub fn referrers(kind: ObjectKind) -> &'static [(ObjectKind, &'static str)] {
    match kind {
        ObjectKind::Bootenvs => &[(ObjectKind::Machines, "bootenv")],
        ObjectKind::Profiles => &[
            (ObjectKind::Machines, "profile"),
            (ObjectKind::Profiles, "profile"),
        ],
        ObjectKind::Templates => &[(ObjectKind::Bootenvs, "template")],
        ObjectKind::Subnets => &[(ObjectKind::Reservations, "subnet")],
        _ => &[],
    }
}

/// The fields `index_terms` produces for `kind`: list filters on these use
/// the index instead of a scan.
pub fn indexed_fields(kind: ObjectKind) -> &'static [&'static str] {
    match kind {
        ObjectKind::Machines => &["name", "arch", "mac", "address", "bootenv", "profile"],
        ObjectKind::Profiles => &["name", "profile"],
        ObjectKind::Params => &["name", "secure"],
        ObjectKind::Bootenvs => &["name", "only_unknown", "template"],
        ObjectKind::Templates => &["id"],
        ObjectKind::Subnets => &["name", "cidr", "enabled"],
        ObjectKind::Reservations => &["address", "mac", "subnet"],
        ObjectKind::Leases => &["address", "client_id", "state", "mac", "node"],
        ObjectKind::Users => &["name", "admin"],
        ObjectKind::Tokens => &["user", "revoked", "expires_at_unix"],
        ObjectKind::Prefs => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A filter on a field listed as indexed but not actually indexed would
    /// silently match nothing, so the two lists must agree exactly.
    #[test]
    fn indexed_fields_match_the_model_index_terms() {
        let samples = [
            (
                ObjectKind::Machines,
                json!({"uuid": "6f1c1f5e-8d7a-4c1e-9a53-1d2b3c4d5e6f", "name": "m1",
                "hardware_addrs": ["52:54:00:00:00:01"], "address": "198.18.0.5", "bootenv": "b", "profiles": ["p"]}),
            ),
            (
                ObjectKind::Profiles,
                json!({"name": "p", "profiles": ["q"]}),
            ),
            (
                ObjectKind::Params,
                json!({"name": "x", "schema": {"type": "string"}}),
            ),
            (
                ObjectKind::Bootenvs,
                json!({"name": "b", "templates": [{"name": "t", "path": "x", "template_id": "t"}]}),
            ),
            (ObjectKind::Templates, json!({"id": "t", "body": "x"})),
            (
                ObjectKind::Subnets,
                json!({"name": "s", "cidr": "198.18.0.0/24"}),
            ),
            (
                ObjectKind::Reservations,
                json!({"address": "198.18.0.9", "hardware_addr": "52:54:00:00:00:02", "subnet": "s"}),
            ),
            (
                ObjectKind::Leases,
                json!({"address": "198.18.0.9", "client_id": "01525400000002",
                "hardware_addr": "52:54:00:00:00:02", "state": "bound", "expires_at_unix": 10, "node": 1}),
            ),
            (
                ObjectKind::Users,
                json!({"name": "u", "password_hash": "$argon2id$x"}),
            ),
            (
                ObjectKind::Tokens,
                json!({"id": "abc", "user": "u", "scope": {"level": "read"},
                "created_at_unix": 1, "expires_at_unix": 2}),
            ),
        ];
        for (kind, value) in samples {
            let object = AnyObject::decode(kind, value).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            let mut produced: Vec<&str> = object.index_terms().iter().map(|(f, _)| *f).collect();
            produced.sort();
            produced.dedup();
            let mut listed = indexed_fields(kind).to_vec();
            listed.sort();
            assert_eq!(produced, listed, "{kind:?}");
        }
    }

    #[test]
    fn decoding_names_the_field_at_fault() {
        let e = AnyObject::decode(
            ObjectKind::Subnets,
            json!({"name": "s", "cidr": "198.18.0.0/24",
            "pools": [{"start": "198.18.0.10", "end": "198.18.1.10"}]}),
        )
        .unwrap_err();
        assert_eq!(e.code, "pool_outside_subnet");
        assert!(
            e.field.as_deref().is_some_and(|f| f.starts_with("pools")),
            "{e:?}"
        );
        let e =
            AnyObject::decode(ObjectKind::Profiles, json!({"name": "p", "colour": 1})).unwrap_err();
        assert_eq!(e.code, "unknown_field");
    }

    /// SHA-256 of the shape of every object document apply accepts (the
    /// model's schemas, descriptions left out), as of log format 2. Format 1
    /// was `54bb96ed…acea`; format 2 added `Lease.subnet`, `Lease.hostname`
    /// and `LeaseState::Declined`, which apply writes only from the format-2
    /// DHCP commands (the generic API refuses lease documents in every
    /// format now, so no old build is handed one it would refuse).
    const FORMAT_2_OBJECT_SHAPES: &str =
        "5cb53b2cbd4831fcf05f0b861798371c3c92143741354b050d15293484950fd0";

    /// A tripwire for the log format rule. Create, replace and patch carry
    /// object documents that apply validates with the model, so what the
    /// model accepts is part of the log format: if a build accepted a field
    /// the build before it refuses, an old follower would refuse an entry
    /// the others applied.
    #[test]
    fn object_shapes_are_pinned_to_the_log_format() {
        use crate::model::*;
        use sha2::{Digest as _, Sha256};
        use utoipa::ToSchema;

        fn strip(value: &mut Value) {
            match value {
                Value::Object(map) => {
                    map.remove("description");
                    map.values_mut().for_each(strip);
                }
                Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        fn add<T: ToSchema>(out: &mut std::collections::BTreeMap<String, Value>) {
            let mut schemas = vec![(T::name().into_owned(), T::schema())];
            T::schemas(&mut schemas);
            for (name, schema) in schemas {
                let mut value = serde_json::to_value(schema).unwrap();
                strip(&mut value);
                out.insert(name, value);
            }
        }
        let mut shapes = std::collections::BTreeMap::new();
        add::<Machine>(&mut shapes);
        add::<Profile>(&mut shapes);
        add::<Param>(&mut shapes);
        add::<BootEnv>(&mut shapes);
        add::<Template>(&mut shapes);
        add::<Subnet>(&mut shapes);
        add::<Reservation>(&mut shapes);
        add::<Lease>(&mut shapes);
        add::<User>(&mut shapes);
        add::<TokenInfo>(&mut shapes);
        add::<Prefs>(&mut shapes);
        let fingerprint = hex::encode(Sha256::digest(serde_json::to_vec(&shapes).unwrap()));
        assert_eq!(
            fingerprint, FORMAT_2_OBJECT_SHAPES,
            "the object documents apply accepts have changed shape. If a released build \
             would refuse, or read differently, a document this build accepts, raise \
             `frames::NEWEST_FORMAT` (and keep apply reading the older formats); then pin the \
             new fingerprint here, under the new format"
        );
    }
}
