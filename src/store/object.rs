//! One value of any object kind, so the store can decode, validate, index and
//! check references of every kind through one type.

use serde_json::Value;

use crate::model::{
    BootEnv, Lease, Machine, Object, ObjectKind, Param, Prefs, Profile, Reservation, Subnet,
    Template, TokenInfo, User,
};

use super::command::Rejection;

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
            let mut object: T = serde_json::from_value(value)
                .map_err(|e| Rejection::new("invalid_body", e.to_string()))?;
            object
                .validate()
                .map_err(|e| Rejection::new(e.code, e.message.clone()).at(e.field.clone()))?;
            Ok(object)
        }
        Ok(match kind {
            ObjectKind::Machines => AnyObject::Machine(typed(value)?),
            ObjectKind::Profiles => AnyObject::Profile(typed(value)?),
            ObjectKind::Params => AnyObject::Param(typed(value)?),
            ObjectKind::Bootenvs => AnyObject::BootEnv(typed(value)?),
            ObjectKind::Templates => AnyObject::Template(typed(value)?),
            ObjectKind::Subnets => AnyObject::Subnet(typed(value)?),
            ObjectKind::Reservations => AnyObject::Reservation(typed(value)?),
            ObjectKind::Leases => AnyObject::Lease(typed(value)?),
            ObjectKind::Users => AnyObject::User(typed(value)?),
            ObjectKind::Tokens => AnyObject::Token(typed(value)?),
            ObjectKind::Prefs => AnyObject::Prefs(typed(value)?),
        })
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
            .map_err(|e| Rejection::new("internal", format!("encoding object: {e}")))
    }

    /// Indexed fields: list filters use them, and deletes use them to find
    /// who still refers to an object.
    pub fn index_terms(&self) -> Vec<(&'static str, String)> {
        let mut terms = Vec::new();
        match self {
            AnyObject::Machine(m) => {
                terms.push(("name", m.name.clone()));
                terms.extend(m.hardware_addrs.iter().map(|mac| ("mac", mac.clone())));
                if let Some(address) = m.address {
                    terms.push(("address", address.to_string()));
                }
                if !m.bootenv.is_empty() {
                    terms.push(("bootenv", m.bootenv.clone()));
                }
                terms.extend(m.profiles.iter().map(|p| ("profile", p.clone())));
            }
            AnyObject::Profile(p) => {
                terms.push(("name", p.name.clone()));
                terms.extend(p.profiles.iter().map(|n| ("profile", n.clone())));
            }
            AnyObject::BootEnv(b) => {
                terms.push(("name", b.name.clone()));
                terms.extend(
                    b.templates
                        .iter()
                        .filter_map(|t| t.template_id.clone())
                        .map(|id| ("template", id)),
                );
            }
            AnyObject::Reservation(r) => {
                terms.push(("address", r.address.to_string()));
                terms.push(("mac", r.hardware_addr.clone()));
                terms.push(("subnet", r.subnet.clone()));
            }
            AnyObject::Lease(l) => {
                terms.push(("address", l.address.to_string()));
                terms.push(("mac", l.hardware_addr.clone()));
            }
            AnyObject::Token(t) => terms.push(("user", t.user.clone())),
            AnyObject::Param(p) => terms.push(("name", p.name.clone())),
            AnyObject::Subnet(s) => terms.push(("name", s.name.clone())),
            AnyObject::User(u) => terms.push(("name", u.name.clone())),
            AnyObject::Template(_) | AnyObject::Prefs(_) => {}
        }
        terms.sort();
        terms.dedup();
        terms
    }

    /// Fields no two objects of the kind may share (besides the key).
    pub fn unique_terms(&self) -> Vec<(&'static str, String)> {
        match self {
            AnyObject::Machine(m) => {
                let mut terms = vec![("name", m.name.clone())];
                terms.extend(m.hardware_addrs.iter().map(|mac| ("mac", mac.clone())));
                if let Some(address) = m.address {
                    terms.push(("address", address.to_string()));
                }
                terms
            }
            AnyObject::Reservation(r) => vec![("mac", r.hardware_addr.clone())],
            _ => Vec::new(),
        }
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
        ObjectKind::Machines => &["name", "mac", "address", "bootenv", "profile"],
        ObjectKind::Profiles => &["name", "profile"],
        ObjectKind::Bootenvs => &["name", "template"],
        ObjectKind::Reservations => &["address", "mac", "subnet"],
        ObjectKind::Leases => &["address", "mac"],
        ObjectKind::Tokens => &["user"],
        ObjectKind::Params | ObjectKind::Subnets | ObjectKind::Users => &["name"],
        ObjectKind::Templates | ObjectKind::Prefs => &[],
    }
}
