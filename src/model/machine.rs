//! Machines: the hosts Cradle boots, identified by UUID and matched to DHCP clients by MAC.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::object::{Object, ObjectKind};
use super::prefs::Prefs;
use super::validate::{
    check_count, check_description, check_host_address, check_len, check_name, check_name_len,
    check_names, code, normalize_mac, ValidationError, MAX_HARDWARE_ADDRS, MAX_HOSTNAME_LEN,
    MAX_META, MAX_META_VALUE_LEN, MAX_PARAMS, MAX_PROFILES,
};

/// CPU architecture a machine boots as; picks the bootenv's kernel and the boot loader.
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
pub enum Arch {
    /// x86-64; `x86_64` is accepted on input because firmware and distributions spell it so.
    #[default]
    #[serde(alias = "x86_64")]
    Amd64,
    #[serde(alias = "aarch64")]
    Arm64,
}

impl Arch {
    pub const fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

// `uuid` may be omitted on create: it then decodes as the nil UUID and the API calls
// `Machine::fill_create_defaults` (which draws a random v4 UUID) before proposing the write.
// Drawing it there, and not in `Object::validate`, keeps validation deterministic so it can also
// run inside the replicated state machine; validation refuses a nil UUID, so an object that
// skipped the API's create path cannot be stored. (The doc comment below is the OpenAPI text.)
/// A machine Cradle boots. `uuid` may be omitted on create: the server assigns one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    #[serde(default)]
    pub uuid: Uuid,
    pub name: String,
    /// Ethernet MAC addresses, normalized to `aa:bb:cc:dd:ee:ff`, sorted.
    #[serde(default)]
    pub hardware_addrs: Vec<String>,
    /// The machine's IPv4 address, when known or fixed.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub address: Option<Ipv4Addr>,
    #[serde(default)]
    pub arch: Arch,
    /// Bootenv name; empty means the prefs' `default_bootenv`.
    #[serde(default)]
    pub bootenv: String,
    /// Profile names, in lookup order (earlier wins).
    #[serde(default)]
    pub profiles: Vec<String>,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Free-form labels for people and UIs; not used by Cradle.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

impl Machine {
    /// Fills what a create may leave out: a random UUID and the default bootenv. Called by the API
    /// (never by the state machine, which must not draw random numbers) before validation.
    pub fn fill_create_defaults(&mut self, prefs: &Prefs) {
        if self.uuid.is_nil() {
            self.uuid = Uuid::new_v4();
        }
        if self.bootenv.is_empty() {
            self.bootenv = prefs.default_bootenv.clone();
        }
    }
}

impl Machine {
    /// The bootenv this machine boots: its own, or the prefs' default when it names none.
    pub fn bootenv_or_default<'a>(&'a self, prefs: &'a Prefs) -> &'a str {
        if self.bootenv.is_empty() {
            &prefs.default_bootenv
        } else {
            &self.bootenv
        }
    }
}

impl Object for Machine {
    const KIND: ObjectKind = ObjectKind::Machines;

    fn key(&self) -> String {
        self.uuid.to_string()
    }

    fn revision(&self) -> u64 {
        self.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn validate(&mut self) -> Result<(), ValidationError> {
        if self.uuid.is_nil() {
            return Err(ValidationError::new(
                "uuid",
                code::MISSING_UUID,
                "uuid must be set (the API assigns one on create)",
            ));
        }
        check_name_len("name", &self.name, MAX_HOSTNAME_LEN)?;

        check_count(
            "hardware_addrs",
            self.hardware_addrs.len(),
            MAX_HARDWARE_ADDRS,
        )?;
        let mut macs = Vec::with_capacity(self.hardware_addrs.len());
        for (i, mac) in self.hardware_addrs.iter().enumerate() {
            macs.push(normalize_mac(&format!("hardware_addrs[{i}]"), mac)?);
        }
        // Order means nothing for MACs; sorted and deduplicated they compare and index stably.
        macs.sort();
        macs.dedup();
        self.hardware_addrs = macs;

        if let Some(addr) = self.address {
            check_host_address("address", addr)?;
        }
        // Empty is allowed: the machine then boots the prefs' `default_bootenv` (see
        // `bootenv_or_default`), so creates that leave it out work without the API filling it.
        if !self.bootenv.is_empty() {
            check_name("bootenv", &self.bootenv)?;
        }
        check_profile_list("profiles", &self.profiles, None)?;
        check_params_map(&self.params)?;

        check_count("meta", self.meta.len(), MAX_META)?;
        for (k, v) in &self.meta {
            check_name(&format!("meta.{k}"), k)?;
            check_len(&format!("meta.{k}"), v, MAX_META_VALUE_LEN)?;
        }
        check_description(&self.description)
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        let mut terms = vec![
            ("name", self.name.clone()),
            ("arch", self.arch.as_str().to_string()),
        ];
        if !self.bootenv.is_empty() {
            terms.push(("bootenv", self.bootenv.clone()));
        }
        terms.extend(self.hardware_addrs.iter().map(|m| ("mac", m.clone())));
        terms.extend(self.address.map(|a| ("address", a.to_string())));
        terms.extend(self.profiles.iter().map(|p| ("profile", p.clone())));
        terms
    }

    /// A name, a MAC and an address each identify one machine: DHCP and boot-file lookups by MAC
    /// or IP must never be ambiguous.
    fn unique_terms(&self) -> Vec<(&'static str, String)> {
        let mut terms = vec![("name", self.name.clone())];
        terms.extend(self.hardware_addrs.iter().map(|m| ("mac", m.clone())));
        terms.extend(self.address.map(|a| ("address", a.to_string())));
        terms
    }
}

/// Profile lists (on machines and profiles): valid names, no duplicates (a repeat could never
/// contribute a value, so it is a mistake), and not the owning profile itself. Order is kept: it
/// is the lookup order.
pub(crate) fn check_profile_list(
    field: &str,
    profiles: &[String],
    owner: Option<&str>,
) -> Result<(), ValidationError> {
    check_count(field, profiles.len(), MAX_PROFILES)?;
    check_names(field, profiles)?;
    for (i, p) in profiles.iter().enumerate() {
        if profiles[..i].contains(p) {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                code::DUPLICATE_PROFILE,
                format!("profile {p:?} is listed twice"),
            ));
        }
        if owner == Some(p.as_str()) {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                code::SELF_REFERENCE,
                format!("profile {p:?} cannot include itself"),
            ));
        }
    }
    Ok(())
}

/// Param maps (on machines and profiles): keys are param names. Values are checked against their
/// definitions by the store, which can see the [`super::Param`]s.
pub(crate) fn check_params_map(
    params: &BTreeMap<String, serde_json::Value>,
) -> Result<(), ValidationError> {
    check_count("params", params.len(), MAX_PARAMS)?;
    for k in params.keys() {
        check_name(&format!("params.{k}"), k)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};

    const UUID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

    fn machine(extra: &str) -> String {
        format!(
            r#"{{"uuid": "{UUID}", "name": "node1.example.com", "bootenv": "discovery"{extra}}}"#
        )
    }

    #[test]
    fn good_machine_round_trips_and_normalizes() {
        let m: Machine = check_ok(&machine(
            r#", "hardware_addrs": ["52:54:00:AA:BB:02", "52-54-00-aa-bb-01", "525400aabb02"],
                "address": "10.0.0.5", "arch": "arm64", "profiles": ["rack1", "base"],
                "params": {"ntp-servers": ["10.0.0.1"], "console": "ttyS0"},
                "meta": {"color": "blue"}, "description": "first""#,
        ));
        assert_eq!(
            m.hardware_addrs,
            vec!["52:54:00:aa:bb:01", "52:54:00:aa:bb:02"]
        );
        assert_eq!(m.profiles, vec!["rack1", "base"], "profile order is kept");
        assert_eq!(m.key(), UUID);
        assert_eq!(m.arch, Arch::Arm64);
        assert_eq!(
            m.unique_terms(),
            vec![
                ("name", "node1.example.com".to_string()),
                ("mac", "52:54:00:aa:bb:01".to_string()),
                ("mac", "52:54:00:aa:bb:02".to_string()),
                ("address", "10.0.0.5".to_string()),
            ]
        );
        let terms = m.index_terms();
        assert!(terms.contains(&("profile", "base".to_string())));
        assert!(terms.contains(&("bootenv", "discovery".to_string())));
        assert!(terms.contains(&("arch", "arm64".to_string())));
    }

    #[test]
    fn defaults_and_aliases() {
        let m: Machine = check_ok(&machine(r#", "arch": "x86_64""#));
        assert_eq!(m.arch, Arch::Amd64);
        assert_eq!(m.address, None);
        let m: Machine = check_ok(&machine(""));
        assert_eq!(m.arch, Arch::Amd64);
    }

    #[test]
    fn create_defaults_fill_uuid_and_bootenv() {
        let unassigned: Machine = check_ok(&format!(r#"{{"uuid": "{UUID}", "name": "n0"}}"#));
        assert_eq!(
            unassigned.bootenv_or_default(&Prefs::default()),
            "discovery"
        );
        assert!(!unassigned
            .index_terms()
            .iter()
            .any(|(k, _)| *k == "bootenv"));
        let mut m: Machine = crate::model::decode(r#"{"name": "n1"}"#).unwrap();
        assert!(m.uuid.is_nil());
        let err = m.clone().validate().expect_err("nil uuid refused");
        assert_eq!((err.field.as_str(), err.code), ("uuid", code::MISSING_UUID));
        m.fill_create_defaults(&Prefs::default());
        assert!(!m.uuid.is_nil());
        assert_eq!(m.bootenv, "discovery");
        m.validate().unwrap();
        let uuid = m.uuid;
        m.fill_create_defaults(&Prefs::default());
        assert_eq!(m.uuid, uuid, "an existing uuid is kept");
    }

    #[test]
    fn garbage_is_refused_with_field_and_code() {
        check_err::<Machine>(
            &machine(r#", "hardware_addrs": ["52:54:00:aa:bb:01", "zz"]"#),
            "hardware_addrs[1]",
            code::INVALID_MAC,
        );
        check_err::<Machine>(
            &machine(r#", "hardware_addrs": ["52:54:00:aa:bb:01", "52:54:00:aa:bb:01:02"]"#),
            "hardware_addrs[1]",
            code::INVALID_MAC,
        );
        check_err::<Machine>(
            &machine(r#", "address": "10.0.0.256""#),
            "address",
            code::INVALID_VALUE,
        );
        check_err::<Machine>(
            &machine(r#", "address": "0.0.0.0""#),
            "address",
            code::INVALID_ADDRESS,
        );
        check_err::<Machine>(
            &machine(r#", "address": 167772165"#),
            "address",
            code::INVALID_TYPE,
        );
        check_err::<Machine>(
            r#"{"uuid": "not-a-uuid", "name": "n"}"#,
            "uuid",
            code::INVALID_VALUE,
        );
        check_err::<Machine>(
            &machine(r#", "arch": "sparc""#),
            "arch",
            code::INVALID_VALUE,
        );
        check_err::<Machine>(&machine(r#", "macs": []"#), "macs", code::UNKNOWN_FIELD);
        check_err::<Machine>(
            &machine(r#", "profiles": "base""#),
            "profiles",
            code::INVALID_TYPE,
        );
        check_err::<Machine>(
            &machine(r#", "profiles": ["a", "b", "a"]"#),
            "profiles[2]",
            code::DUPLICATE_PROFILE,
        );
        check_err::<Machine>(
            &machine(r#", "profiles": ["ok", "not ok"]"#),
            "profiles[1]",
            code::INVALID_NAME,
        );
        check_err::<Machine>(
            &machine(r#", "params": {"bad/name": 1}"#),
            "params.bad/name",
            code::INVALID_NAME,
        );
        check_err::<Machine>(
            &machine(r#", "meta": {"k": 1}"#),
            "meta.k",
            code::INVALID_TYPE,
        );
        check_err::<Machine>(
            &format!(r#"{{"uuid": "{UUID}", "name": "has space", "bootenv": "x"}}"#),
            "name",
            code::INVALID_NAME,
        );
        check_err::<Machine>(
            &format!(r#"{{"uuid": "{UUID}", "name": "n", "bootenv": "a b"}}"#),
            "bootenv",
            code::INVALID_NAME,
        );
        check_err::<Machine>(
            &format!(r#"{{"uuid": "{UUID}", "bootenv": "x"}}"#),
            "name",
            code::MISSING_FIELD,
        );
        let many: Vec<String> = (0..33)
            .map(|i| format!("\"52:54:00:00:00:{i:02x}\""))
            .collect();
        check_err::<Machine>(
            &machine(&format!(r#", "hardware_addrs": [{}]"#, many.join(","))),
            "hardware_addrs",
            code::TOO_MANY,
        );
    }
}
