//! Reservations: a fixed address for one MAC in one subnet, with per-client options.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::object::{Object, ObjectKind};
use super::subnet::{check_options, DhcpOption};
use super::validate::{
    check_description, check_host_address, check_name, normalize_mac, ValidationError,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    #[schema(value_type = String, format = Ipv4)]
    pub address: Ipv4Addr,
    /// Normalized to `aa:bb:cc:dd:ee:ff`.
    pub hardware_addr: String,
    /// Name of the subnet the address belongs to.
    pub subnet: String,
    /// Added to, and overriding, the subnet's options for this client.
    #[serde(default)]
    pub options: Vec<DhcpOption>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub next_server: Option<Ipv4Addr>,
    #[serde(default)]
    pub description: String,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

impl Object for Reservation {
    const KIND: ObjectKind = ObjectKind::Reservations;

    fn key(&self) -> String {
        self.address.to_string()
    }

    fn revision(&self) -> u64 {
        self.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn validate(&mut self) -> Result<(), ValidationError> {
        check_host_address("address", self.address)?;
        self.hardware_addr = normalize_mac("hardware_addr", &self.hardware_addr)?;
        check_name("subnet", &self.subnet)?;
        check_options(&self.address.to_string(), &mut self.options)?;
        if let Some(ns) = self.next_server {
            check_host_address("next_server", ns)?;
        }
        check_description(&self.description)
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        vec![
            ("address", self.address.to_string()),
            ("mac", self.hardware_addr.clone()),
            ("subnet", self.subnet.clone()),
        ]
    }

    /// One reservation per MAC per subnet: two would leave the DHCP server choosing between
    /// addresses. (A MAC may hold reservations in different subnets, e.g. behind different relays.)
    fn unique_terms(&self) -> Vec<(&'static str, String)> {
        vec![(
            "subnet_mac",
            format!("{}/{}", self.subnet, self.hardware_addr),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};
    use crate::model::validate::code;

    #[test]
    fn reservations_round_trip() {
        let r: Reservation = check_ok(
            r#"{"address": "10.0.0.20", "hardware_addr": "52-54-00-AA-BB-01", "subnet": "lab",
                "options": [{"code": 12, "value": "node20"}], "next_server": "10.0.0.2"}"#,
        );
        assert_eq!(r.hardware_addr, "52:54:00:aa:bb:01");
        assert_eq!(r.key(), "10.0.0.20");
        assert_eq!(
            r.unique_terms(),
            vec![("subnet_mac", "lab/52:54:00:aa:bb:01".to_string())]
        );
    }

    #[test]
    fn bad_reservations_are_refused() {
        check_err::<Reservation>(
            r#"{"address": "10.0.0.20", "hardware_addr": "nope", "subnet": "lab"}"#,
            "hardware_addr",
            code::INVALID_MAC,
        );
        check_err::<Reservation>(
            r#"{"address": "10.0.0", "hardware_addr": "52:54:00:aa:bb:01", "subnet": "lab"}"#,
            "address",
            code::INVALID_VALUE,
        );
        check_err::<Reservation>(
            r#"{"address": "0.0.0.0", "hardware_addr": "52:54:00:aa:bb:01", "subnet": "lab"}"#,
            "address",
            code::INVALID_ADDRESS,
        );
        check_err::<Reservation>(
            r#"{"address": "10.0.0.20", "hardware_addr": "52:54:00:aa:bb:01"}"#,
            "subnet",
            code::MISSING_FIELD,
        );
        check_err::<Reservation>(
            r#"{"address": "10.0.0.20", "hardware_addr": "52:54:00:aa:bb:01", "subnet": "lab", "options": [{"code": 54, "value": "x"}]}"#,
            "options[0].code",
            code::RESERVED_OPTION_CODE,
        );
        check_err::<Reservation>(
            r#"{"address": "10.0.0.20", "hardware_addr": "52:54:00:aa:bb:01", "subnet": "lab", "options": [{"code": 3}]}"#,
            "options[0].value",
            code::MISSING_FIELD,
        );
        check_err::<Reservation>(
            r#"{"address": "10.0.0.20", "mac": "52:54:00:aa:bb:01", "subnet": "lab"}"#,
            "mac",
            code::UNKNOWN_FIELD,
        );
    }
}
