//! DHCP leases: which client holds which address until when. Written by the DHCP server through
//! the replicated log; the allocation decision itself is made in the state machine's apply.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::object::{Object, ObjectKind};
use super::validate::{
    check_host_address, check_len, check_name, code, normalize_mac, ValidationError,
};

/// A DHCP client identifier is at most 255 bytes (one option); as hex, twice that.
pub const MAX_CLIENT_ID_HEX: usize = 510;
/// Longest client hostname kept (option 12 carries at most 255 bytes).
pub const MAX_HOSTNAME_BYTES: usize = 255;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Held for a client between OFFER and REQUEST (short expiry).
    #[default]
    Offered,
    Bound,
    Released,
    Expired,
    /// The client said the address is in use by someone else (DHCPDECLINE): the address is
    /// quarantined until `expires_at_unix`, then reclaimed.
    Declined,
}

impl LeaseState {
    pub const fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Expired => "expired",
            LeaseState::Declined => "declined",
        }
    }

    /// Whether a lease in this state keeps its address from everyone else.
    pub const fn holds_address(self) -> bool {
        matches!(
            self,
            LeaseState::Offered | LeaseState::Bound | LeaseState::Declined
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    #[schema(value_type = String, format = Ipv4)]
    pub address: Ipv4Addr,
    /// The client identifier (option 61, or htype + chaddr when absent), as lowercase hex without
    /// separators.
    pub client_id: String,
    /// The client's MAC, normalized; empty for clients whose hardware type is not Ethernet, which
    /// are known by `client_id` alone.
    #[serde(default)]
    pub hardware_addr: String,
    /// The subnet the address was allocated from.
    #[serde(default)]
    pub subnet: String,
    /// The hostname the client sent (option 12), if any.
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub state: LeaseState,
    /// When the lease ends, Unix seconds (stamped by the leader, never a replica's own clock).
    pub expires_at_unix: u64,
    /// Relay agent address (giaddr) the request came through, if relayed.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub via: Option<Ipv4Addr>,
    /// The node that answered the client.
    #[serde(default)]
    pub node: Option<u64>,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

/// Normalizes a client identifier to lowercase hex, accepting `:`/`-` separated octets.
pub fn normalize_client_id(s: &str) -> Result<String, ValidationError> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.is_empty()
        || hex.len() % 2 != 0
        || hex.len() > MAX_CLIENT_ID_HEX
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ValidationError::new(
            "client_id",
            code::INVALID_CLIENT_ID,
            format!("{s:?} is not a hex client identifier of 1 to 255 bytes"),
        ));
    }
    Ok(hex)
}

impl Object for Lease {
    const KIND: ObjectKind = ObjectKind::Leases;

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
        self.client_id = normalize_client_id(&self.client_id)?;
        if !self.hardware_addr.is_empty() {
            self.hardware_addr = normalize_mac("hardware_addr", &self.hardware_addr)?;
        }
        if let Some(via) = self.via {
            check_host_address("via", via)?;
        }
        if !self.subnet.is_empty() {
            check_name("subnet", &self.subnet)?;
        }
        check_len("hostname", &self.hostname, MAX_HOSTNAME_BYTES)?;
        Ok(())
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        let mut terms = vec![
            ("address", self.address.to_string()),
            ("client_id", self.client_id.clone()),
            ("state", self.state.as_str().to_string()),
        ];
        if !self.hardware_addr.is_empty() {
            terms.push(("mac", self.hardware_addr.clone()));
        }
        terms.extend(self.node.map(|n| ("node", n.to_string())));
        terms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};

    #[test]
    fn leases_round_trip() {
        let l: Lease = check_ok(
            r#"{"address": "10.0.0.50", "client_id": "01:52:54:00:AA:BB:01",
                "hardware_addr": "52:54:00:AA:BB:01", "state": "bound",
                "expires_at_unix": 1700000000, "via": "10.0.1.1", "node": 2}"#,
        );
        assert_eq!(l.client_id, "01525400aabb01");
        assert_eq!(l.hardware_addr, "52:54:00:aa:bb:01");
        assert!(l.index_terms().contains(&("state", "bound".to_string())));
        let l: Lease =
            check_ok(r#"{"address": "10.0.0.51", "client_id": "ff00", "expires_at_unix": 0}"#);
        assert_eq!(l.state, LeaseState::Offered);
    }

    #[test]
    fn bad_leases_are_refused() {
        check_err::<Lease>(
            r#"{"address": "10.0.0.50", "client_id": "abc", "expires_at_unix": 1}"#,
            "client_id",
            code::INVALID_CLIENT_ID,
        );
        check_err::<Lease>(
            r#"{"address": "10.0.0.50", "client_id": "zz", "expires_at_unix": 1}"#,
            "client_id",
            code::INVALID_CLIENT_ID,
        );
        check_err::<Lease>(
            r#"{"address": "10.0.0.50", "client_id": "", "expires_at_unix": 1}"#,
            "client_id",
            code::INVALID_CLIENT_ID,
        );
        check_err::<Lease>(
            r#"{"address": "10.0.0.50", "client_id": "01", "hardware_addr": "x", "expires_at_unix": 1}"#,
            "hardware_addr",
            code::INVALID_MAC,
        );
        check_err::<Lease>(
            r#"{"address": "10.0.0.50", "client_id": "01", "state": "active", "expires_at_unix": 1}"#,
            "state",
            code::INVALID_VALUE,
        );
        check_err::<Lease>(
            r#"{"address": "10.0.0.50", "client_id": "01"}"#,
            "expires_at_unix",
            code::MISSING_FIELD,
        );
        check_err::<Lease>(
            r#"{"address": "10.0.0.50", "client_id": "01", "expires_at_unix": "soon"}"#,
            "expires_at_unix",
            code::INVALID_TYPE,
        );
    }
}
