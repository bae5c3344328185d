//! DHCP subnets: the address pools Cradle allocates from, lease times and options; and the DHCP
//! option type reservations share.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::object::{Object, ObjectKind};
use super::template::check_template_field;
use super::validate::{check_count, check_len, check_name, code, ValidationError};

pub const MAX_POOLS: usize = 64;
pub const MAX_OPTIONS: usize = 64;
/// A DHCP option carries at most 255 bytes (more only by RFC 3396 concatenation); 1 KiB of
/// template leaves room for template syntax and bounds parse time.
pub const MAX_OPTION_VALUE_LEN: usize = 1024;

/// A DHCP option Cradle adds to replies. `value` is a tera template rendered per client (so an
/// option can carry, say, the machine's name), then encoded for `code` by the DHCP server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DhcpOption {
    pub code: u8,
    pub value: String,
}

/// Inclusive range of addresses Cradle may hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolRange {
    #[schema(value_type = String, format = Ipv4)]
    pub start: Ipv4Addr,
    #[schema(value_type = String, format = Ipv4)]
    pub end: Ipv4Addr,
}

impl PoolRange {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.start <= addr && addr <= self.end
    }

    /// Number of addresses in the range.
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.end)).saturating_sub(u64::from(u32::from(self.start))) + 1
    }

    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubnetMode {
    /// Cradle assigns addresses and boot options.
    #[default]
    Full,
    /// Another server assigns addresses; Cradle answers only the boot options (proxyDHCP).
    Proxy,
    /// Cradle assigns only reserved addresses; unknown clients get nothing.
    ReservationsOnly,
}

/// How a free address is chosen for a client without a binding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Picker {
    /// The address the client asked for if free, else the next free one.
    #[default]
    Hint,
    /// The lowest free address.
    NextFree,
    /// The address whose lease expired longest ago (spreads reuse, helps stale ARP caches).
    MostExpired,
}

fn default_lease_secs() -> u32 {
    3600
}

fn default_reserved_lease_secs() -> u32 {
    7200
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub name: String,
    /// The network, normalized to its network address (`10.0.0.7/24` is stored as `10.0.0.0/24`).
    #[schema(value_type = String, example = "10.0.0.0/24")]
    pub cidr: Ipv4Net,
    /// Sorted by start; non-overlapping; inside `cidr`, excluding its network and broadcast
    /// addresses.
    #[serde(default)]
    pub pools: Vec<PoolRange>,
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// Lease time for clients with a reservation.
    #[serde(default = "default_reserved_lease_secs")]
    pub reserved_lease_secs: u32,
    /// Sorted by code, one per code.
    #[serde(default)]
    pub options: Vec<DhcpOption>,
    /// Next-server (siaddr) to hand out; unset means the answering node.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub next_server: Option<Ipv4Addr>,
    #[serde(default)]
    pub mode: SubnetMode,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub picker: Picker,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

impl Subnet {
    /// Whether `addr` is one of this subnet's host addresses (not network or broadcast).
    pub fn is_host(&self, addr: Ipv4Addr) -> bool {
        self.cidr.contains(&addr) && addr != self.cidr.network() && addr != self.cidr.broadcast()
    }
}

/// Options Cradle sets itself from other fields; letting a subnet or reservation override them
/// would break the exchange: 0 (pad) and 255 (end) are framing, 51 (lease time) comes from
/// `lease_secs`, 53 (message type) and 54 (server identifier) from the protocol.
fn check_option_code(field: &str, code_: u8) -> Result<(), ValidationError> {
    match code_ {
        0 | 255 => Err(ValidationError::new(
            field,
            code::INVALID_OPTION_CODE,
            format!("option {code_} is pad/end, not an option"),
        )),
        51 | 53 | 54 => Err(ValidationError::new(
            field,
            code::RESERVED_OPTION_CODE,
            format!("option {code_} is set by Cradle itself"),
        )),
        _ => Ok(()),
    }
}

/// Checks and normalizes an option list (subnets and reservations): valid codes, one entry per
/// code, values parse as templates; then sorted by code.
pub(crate) fn check_options(
    owner: &str,
    options: &mut [DhcpOption],
) -> Result<(), ValidationError> {
    check_count("options", options.len(), MAX_OPTIONS)?;
    for (i, o) in options.iter().enumerate() {
        check_option_code(&format!("options[{i}].code"), o.code)?;
        if options[..i].iter().any(|p| p.code == o.code) {
            return Err(ValidationError::new(
                format!("options[{i}].code"),
                code::DUPLICATE_OPTION,
                format!("option {} is set twice", o.code),
            ));
        }
        check_len(
            &format!("options[{i}].value"),
            &o.value,
            MAX_OPTION_VALUE_LEN,
        )?;
        check_template_field(
            &format!("options[{i}].value"),
            &format!("{owner}/option-{}", o.code),
            &o.value,
        )?;
    }
    // Codes are unique, so sorting by code is a total order.
    options.sort_by_key(|o| o.code);
    Ok(())
}

fn check_lease_secs(field: &str, secs: u32) -> Result<(), ValidationError> {
    if secs == 0 {
        return Err(ValidationError::new(
            field,
            code::INVALID_LEASE_TIME,
            "lease time must be at least one second",
        ));
    }
    Ok(())
}

impl Object for Subnet {
    const KIND: ObjectKind = ObjectKind::Subnets;

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
        // A /31 or /32 has no address that is neither network nor broadcast to give out.
        if self.cidr.prefix_len() > 30 {
            return Err(ValidationError::new(
                "cidr",
                code::INVALID_CIDR,
                format!("{} is too small to hold a host address", self.cidr),
            ));
        }
        self.cidr = self.cidr.trunc();

        check_count("pools", self.pools.len(), MAX_POOLS)?;
        for (i, pool) in self.pools.iter().enumerate() {
            if pool.start > pool.end {
                return Err(ValidationError::new(
                    format!("pools[{i}].end"),
                    code::POOL_REVERSED,
                    format!("pool ends ({}) before it starts ({})", pool.end, pool.start),
                ));
            }
            for (end, addr) in [("start", pool.start), ("end", pool.end)] {
                if !self.is_host(addr) {
                    return Err(ValidationError::new(
                        format!("pools[{i}].{end}"),
                        code::POOL_OUTSIDE_SUBNET,
                        format!(
                            "{addr} is not a host address of {} (network and broadcast excluded)",
                            self.cidr
                        ),
                    ));
                }
            }
        }
        // Overlaps are reported against the client's indices, so sort a list of indices rather
        // than the pools until everything has been checked.
        let mut order: Vec<usize> = (0..self.pools.len()).collect();
        order.sort_by_key(|&i| (self.pools[i].start, i));
        for w in order.windows(2) {
            let (a, b) = (w[0], w[1]);
            if self.pools[b].start <= self.pools[a].end {
                let later = a.max(b);
                return Err(ValidationError::new(
                    format!("pools[{later}]"),
                    code::POOL_OVERLAP,
                    format!(
                        "pool {}-{} overlaps pool {}-{}",
                        self.pools[later].start,
                        self.pools[later].end,
                        self.pools[a.min(b)].start,
                        self.pools[a.min(b)].end
                    ),
                ));
            }
        }

        check_lease_secs("lease_secs", self.lease_secs)?;
        check_lease_secs("reserved_lease_secs", self.reserved_lease_secs)?;
        check_options(&self.name, &mut self.options)?;
        if let Some(ns) = self.next_server {
            super::validate::check_host_address("next_server", ns)?;
        }

        self.pools.sort_by_key(|p| p.start);
        Ok(())
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("cidr", self.cidr.to_string()),
            ("enabled", self.enabled.to_string()),
        ]
    }

    /// Two subnets for the same network would make address allocation ambiguous. (Partial
    /// overlaps, e.g. a /24 inside a /16, need a range query: the store checks those.)
    fn unique_terms(&self) -> Vec<(&'static str, String)> {
        vec![("cidr", self.cidr.to_string())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};

    fn subnet(pools: &str, extra: &str) -> String {
        format!(r#"{{"name": "lab", "cidr": "10.0.0.0/24", "pools": [{pools}]{extra}}}"#)
    }

    fn pool(start: &str, end: &str) -> String {
        format!(r#"{{"start": "{start}", "end": "{end}"}}"#)
    }

    #[test]
    fn subnets_round_trip_with_defaults_and_normalization() {
        let s: Subnet = check_ok(&format!(
            r#"{{"name": "lab", "cidr": "10.0.0.7/24", "pools": [{}, {}],
                "options": [{{"code": 6, "value": "10.0.0.1"}}, {{"code": 3, "value": "10.0.0.1"}},
                            {{"code": 12, "value": "{{{{ machine.name }}}}"}}],
                "next_server": "10.0.0.2", "mode": "reservations_only", "picker": "most_expired"}}"#,
            pool("10.0.0.200", "10.0.0.254"),
            pool("10.0.0.1", "10.0.0.99")
        ));
        assert_eq!(s.cidr.to_string(), "10.0.0.0/24");
        assert_eq!(s.pools[0].start, Ipv4Addr::new(10, 0, 0, 1), "pools sorted");
        assert_eq!(s.pools[0].len(), 99);
        assert_eq!(
            s.options.iter().map(|o| o.code).collect::<Vec<_>>(),
            vec![3, 6, 12]
        );
        assert_eq!((s.lease_secs, s.reserved_lease_secs), (3600, 7200));
        assert!(s.enabled);
        assert_eq!(s.mode, SubnetMode::ReservationsOnly);
        assert_eq!(s.picker, Picker::MostExpired);
        assert_eq!(s.unique_terms(), vec![("cidr", "10.0.0.0/24".to_string())]);
        let s: Subnet = check_ok(
            r#"{"name": "proxy", "cidr": "192.168.1.0/30", "mode": "proxy", "enabled": false}"#,
        );
        assert_eq!(
            (s.mode, s.picker, s.enabled),
            (SubnetMode::Proxy, Picker::Hint, false)
        );
    }

    #[test]
    fn pools_must_fit_the_subnet_and_not_overlap() {
        let p = pool;
        check_err::<Subnet>(
            &subnet(&p("10.0.0.0", "10.0.0.9"), ""),
            "pools[0].start",
            code::POOL_OUTSIDE_SUBNET,
        );
        check_err::<Subnet>(
            &subnet(&p("10.0.0.10", "10.0.0.255"), ""),
            "pools[0].end",
            code::POOL_OUTSIDE_SUBNET,
        );
        check_err::<Subnet>(
            &subnet(&p("10.0.1.10", "10.0.1.20"), ""),
            "pools[0].start",
            code::POOL_OUTSIDE_SUBNET,
        );
        check_err::<Subnet>(
            &subnet(
                &format!(
                    "{},{}",
                    p("10.0.0.1", "10.0.0.9"),
                    p("10.0.0.20", "10.0.0.10")
                ),
                "",
            ),
            "pools[1].end",
            code::POOL_REVERSED,
        );
        check_err::<Subnet>(
            &subnet(
                &format!(
                    "{},{}",
                    p("10.0.0.50", "10.0.0.60"),
                    p("10.0.0.10", "10.0.0.50")
                ),
                "",
            ),
            "pools[1]",
            code::POOL_OVERLAP,
        );
        check_err::<Subnet>(
            &subnet(
                &format!(
                    "{},{},{}",
                    p("10.0.0.1", "10.0.0.9"),
                    p("10.0.0.100", "10.0.0.110"),
                    p("10.0.0.105", "10.0.0.105")
                ),
                "",
            ),
            "pools[2]",
            code::POOL_OVERLAP,
        );
        check_err::<Subnet>(
            &subnet(&p("10.0.0.1", "10.0.0.x"), ""),
            "pools[0].end",
            code::INVALID_VALUE,
        );
    }

    #[test]
    fn other_subnet_garbage_is_refused() {
        check_err::<Subnet>(
            r#"{"name": "s", "cidr": "10.0.0.0/33"}"#,
            "cidr",
            code::INVALID_VALUE,
        );
        check_err::<Subnet>(
            r#"{"name": "s", "cidr": "10.0.0.0"}"#,
            "cidr",
            code::INVALID_VALUE,
        );
        check_err::<Subnet>(
            r#"{"name": "s", "cidr": "fd00::/64"}"#,
            "cidr",
            code::INVALID_VALUE,
        );
        check_err::<Subnet>(
            r#"{"name": "s", "cidr": "10.0.0.0/31"}"#,
            "cidr",
            code::INVALID_CIDR,
        );
        check_err::<Subnet>(r#"{"name": "s"}"#, "cidr", code::MISSING_FIELD);
        check_err::<Subnet>(
            &subnet("", r#", "lease_secs": 0"#),
            "lease_secs",
            code::INVALID_LEASE_TIME,
        );
        check_err::<Subnet>(
            &subnet("", r#", "reserved_lease_secs": 0"#),
            "reserved_lease_secs",
            code::INVALID_LEASE_TIME,
        );
        check_err::<Subnet>(
            &subnet("", r#", "lease_secs": -1"#),
            "lease_secs",
            code::INVALID_VALUE,
        );
        check_err::<Subnet>(
            &subnet("", r#", "options": [{"code": 0, "value": ""}]"#),
            "options[0].code",
            code::INVALID_OPTION_CODE,
        );
        check_err::<Subnet>(
            &subnet(
                "",
                r#", "options": [{"code": 3, "value": ""}, {"code": 255, "value": ""}]"#,
            ),
            "options[1].code",
            code::INVALID_OPTION_CODE,
        );
        check_err::<Subnet>(
            &subnet("", r#", "options": [{"code": 256, "value": ""}]"#),
            "options[0].code",
            code::INVALID_VALUE,
        );
        check_err::<Subnet>(
            &subnet("", r#", "options": [{"code": 53, "value": "1"}]"#),
            "options[0].code",
            code::RESERVED_OPTION_CODE,
        );
        check_err::<Subnet>(
            &subnet(
                "",
                r#", "options": [{"code": 3, "value": "a"}, {"code": 3, "value": "b"}]"#,
            ),
            "options[1].code",
            code::DUPLICATE_OPTION,
        );
        check_err::<Subnet>(
            &subnet("", r#", "options": [{"code": 12, "value": "{{ x"}]"#),
            "options[0].value",
            code::INVALID_TEMPLATE,
        );
        let long = format!(
            r#", "options": [{{"code": 43, "value": "{}"}}]"#,
            "a".repeat(1025)
        );
        check_err::<Subnet>(&subnet("", &long), "options[0].value", code::TOO_LONG);
        check_err::<Subnet>(
            &subnet("", r#", "mode": "off""#),
            "mode",
            code::INVALID_VALUE,
        );
        check_err::<Subnet>(
            &subnet("", r#", "picker": "random""#),
            "picker",
            code::INVALID_VALUE,
        );
        check_err::<Subnet>(
            &subnet("", r#", "next_server": "255.255.255.255""#),
            "next_server",
            code::INVALID_ADDRESS,
        );
        check_err::<Subnet>(&subnet("", r#", "lease": 5"#), "lease", code::UNKNOWN_FIELD);
    }
}
