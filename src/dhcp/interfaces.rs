//! The host's network interfaces as DHCP sees them: name, index and IPv4
//! networks, and the choice of those DHCP serves (`--dhcp-interface`).
//!
//! DHCP listens on one wildcard socket and learns each packet's ingress
//! interface from IP_PKTINFO (see [`super::socket`]), so this list is what
//! the handler matches that index against: which interfaces it answers on,
//! and which of the node's addresses (subnet selection, `siaddr`) belong to
//! each. Binding one socket per interface instead would need
//! `SO_BINDTODEVICE`, hence CAP_NET_RAW, for nothing more.

use std::collections::{btree_map, BTreeMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::{if_nametoindex, InterfaceFlags};
use nix::sys::socket::SockaddrStorage;

pub use crate::config::MAX_INTERFACE_NAME_BYTES;

/// One network interface with the IPv4 networks assigned to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// The kernel's index, as IP_PKTINFO reports it on each packet.
    pub index: u32,
    /// In the kernel's order; the first is the interface's primary address.
    pub addrs: Vec<Ipv4Net>,
    /// Loopback is served only when named in `--dhcp-interface`.
    pub loopback: bool,
    /// Administratively up (IFF_UP) when listed. A down interface is still
    /// listed and chosen: it receives nothing until it comes up, and
    /// sending out of it fails ("Network is unreachable").
    pub up: bool,
}

/// Why the interfaces named in `--dhcp-interface` cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error(
        "no interface named {name:?} (interfaces with IPv4: {})",
        list(existing)
    )]
    Unknown { name: String, existing: Vec<String> },
    #[error("interface {name:?} has no IPv4 address")]
    NoIpv4 { name: String },
    #[error("reading the network interfaces: {0}")]
    Io(#[from] std::io::Error),
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Every non-loopback interface with an IPv4 address: what DHCP serves when
/// `--dhcp-interface` is not given. Loopback is listed by
/// [`all_interfaces`] and served only when asked for by name; use
/// [`dhcp_interfaces`] to apply `--dhcp-interface`.
pub fn list_interfaces() -> std::io::Result<Vec<Interface>> {
    Ok(all_interfaces()?
        .into_iter()
        .filter(|interface| !interface.loopback && !interface.addrs.is_empty())
        .collect())
}

/// Every interface, loopback and those without IPv4 included, sorted by
/// index.
pub fn all_interfaces() -> std::io::Result<Vec<Interface>> {
    let entries = getifaddrs()?.map(|entry| {
        let ipv4 = |a: &Option<SockaddrStorage>| {
            a.as_ref().and_then(|a| a.as_sockaddr_in()).map(|a| a.ip())
        };
        Entry {
            label: entry.interface_name.clone(),
            loopback: entry.flags.contains(InterfaceFlags::IFF_LOOPBACK),
            up: entry.flags.contains(InterfaceFlags::IFF_UP),
            address: ipv4(&entry.address).map(|address| (address, ipv4(&entry.netmask))),
        }
    });
    // An interface may vanish between the two calls: it is left out then.
    Ok(group(entries, |name| if_nametoindex(name).ok()))
}

/// One `getifaddrs` entry, as far as DHCP cares.
struct Entry {
    /// The interface name, or for an IPv4 address with a label
    /// (`ip addr add … label eth0:1`) that label.
    label: String,
    loopback: bool,
    up: bool,
    /// An IPv4 address and its netmask.
    address: Option<(Ipv4Addr, Option<Ipv4Addr>)>,
}

/// Entries gathered per interface, sorted by index. A label's addresses
/// belong to the interface named before its `:` (no interface name holds
/// one), which is what IP_PKTINFO reports packets on.
fn group(
    entries: impl Iterator<Item = Entry>,
    index_of: impl Fn(&str) -> Option<u32>,
) -> Vec<Interface> {
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    for entry in entries {
        let name = match entry.label.split_once(':') {
            Some((name, _label)) => name.to_string(),
            None => entry.label,
        };
        let interface = match by_name.entry(name) {
            btree_map::Entry::Occupied(known) => known.into_mut(),
            btree_map::Entry::Vacant(new) => {
                let Some(index) = index_of(new.key()) else {
                    continue;
                };
                let name = new.key().clone();
                new.insert(Interface {
                    name,
                    index,
                    addrs: Vec::new(),
                    loopback: entry.loopback,
                    up: entry.up,
                })
            }
        };
        if let Some((address, mask)) = entry.address {
            interface.addrs.push(network(address, mask));
        }
    }
    let mut all: Vec<Interface> = by_name.into_values().collect();
    all.sort_by_key(|interface| interface.index);
    all
}

/// An address with its netmask; a missing or non-contiguous mask (which
/// Linux does not produce) counts as a host route.
fn network(address: Ipv4Addr, mask: Option<Ipv4Addr>) -> Ipv4Net {
    let prefix = mask
        .and_then(|m| ipnet::ipv4_mask_to_prefix(m).ok())
        .unwrap_or(32);
    Ipv4Net::new(address, prefix).unwrap_or_else(|_| Ipv4Net::from(address))
}

/// The interfaces DHCP serves: with no names, every non-loopback interface
/// of `all` with an IPv4 address; otherwise exactly those named (loopback
/// included), each once, in the order given.
pub fn select_interfaces(
    all: Vec<Interface>,
    wanted: &[String],
) -> Result<Vec<Interface>, InterfaceError> {
    if wanted.is_empty() {
        return Ok(all
            .into_iter()
            .filter(|interface| !interface.loopback && !interface.addrs.is_empty())
            .collect());
    }
    let mut chosen: Vec<Interface> = Vec::with_capacity(wanted.len());
    for name in wanted {
        if chosen.iter().any(|interface| &interface.name == name) {
            continue;
        }
        let Some(interface) = all.iter().find(|interface| &interface.name == name) else {
            return Err(InterfaceError::Unknown {
                name: name.clone(),
                existing: all
                    .iter()
                    .filter(|interface| !interface.addrs.is_empty())
                    .map(|interface| interface.name.clone())
                    .collect(),
            });
        };
        if interface.addrs.is_empty() {
            return Err(InterfaceError::NoIpv4 { name: name.clone() });
        }
        chosen.push(interface.clone());
    }
    Ok(chosen)
}

/// [`select_interfaces`] over the host's interfaces as they are now: what
/// `server::start` calls with `--dhcp-interface`.
pub fn dhcp_interfaces(wanted: &[String]) -> Result<Vec<Interface>, InterfaceError> {
    select_interfaces(all_interfaces()?, wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(name: &str, index: u32, addrs: &[&str], loopback: bool) -> Interface {
        Interface {
            name: name.to_string(),
            index,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            loopback,
            up: true,
        }
    }

    fn host() -> Vec<Interface> {
        vec![
            interface("lo", 1, &["127.0.0.1/8"], true),
            interface("eth0", 2, &["192.0.2.2/24", "198.51.100.1/25"], false),
            interface("eth1", 3, &[], false),
            interface("br0", 4, &["203.0.113.1/24"], false),
        ]
    }

    fn names(interfaces: &[Interface]) -> Vec<&str> {
        interfaces.iter().map(|i| i.name.as_str()).collect()
    }

    fn wanted(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn by_default_every_non_loopback_interface_with_ipv4() {
        let chosen = select_interfaces(host(), &[]).unwrap();
        assert_eq!(names(&chosen), ["eth0", "br0"]);
        assert_eq!(chosen[0].addrs.len(), 2);
    }

    #[test]
    fn named_interfaces_in_order_once_loopback_included() {
        let chosen = select_interfaces(host(), &wanted(&["br0", "lo", "br0"])).unwrap();
        assert_eq!(names(&chosen), ["br0", "lo"]);
        assert_eq!(chosen[1].index, 1);
    }

    #[test]
    fn an_unknown_name_is_named_with_what_exists() {
        let err = select_interfaces(host(), &wanted(&["eth0", "eht1"])).unwrap_err();
        assert!(matches!(&err, InterfaceError::Unknown { name, .. } if name == "eht1"));
        assert_eq!(
            err.to_string(),
            "no interface named \"eht1\" (interfaces with IPv4: lo, eth0, br0)"
        );
        let err = select_interfaces(Vec::new(), &wanted(&["eth0"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no interface named \"eth0\" (interfaces with IPv4: none)"
        );
    }

    #[test]
    fn a_named_interface_without_ipv4_is_refused() {
        let err = select_interfaces(host(), &wanted(&["eth1"])).unwrap_err();
        assert_eq!(err.to_string(), "interface \"eth1\" has no IPv4 address");
    }

    #[test]
    fn entries_are_gathered_per_interface_labels_included() {
        let entry = |label: &str, loopback: bool, address: Option<(&str, &str)>| Entry {
            label: label.to_string(),
            loopback,
            up: true,
            address: address.map(|(a, m)| (a.parse().unwrap(), Some(m.parse().unwrap()))),
        };
        let mask24 = "255.255.255.0";
        // What getifaddrs gives: a link entry per interface first (no IPv4),
        // then the addresses, an aliased one under its label.
        let entries = vec![
            entry("lo", true, None),
            entry("eth0", false, None),
            entry("eth1", false, None),
            entry("gone0", false, None),
            entry("lo", true, Some(("127.0.0.1", "255.0.0.0"))),
            entry("eth1", false, Some(("203.0.113.1", mask24))),
            entry("eth0", false, Some(("192.0.2.2", mask24))),
            entry("eth0:lab", false, Some(("198.51.100.1", "255.255.255.128"))),
        ];
        let index_of = |name: &str| match name {
            "lo" => Some(1),
            "eth0" => Some(2),
            "eth1" => Some(3),
            _ => None,
        };
        let all = group(entries.into_iter(), index_of);
        assert_eq!(
            all,
            [
                interface("lo", 1, &["127.0.0.1/8"], true),
                interface("eth0", 2, &["192.0.2.2/24", "198.51.100.1/25"], false),
                interface("eth1", 3, &["203.0.113.1/24"], false),
            ]
        );
    }

    #[test]
    fn masks_become_prefixes() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        let check = |mask: Option<Ipv4Addr>, expected: &str| {
            assert_eq!(network(ip, mask).to_string(), expected, "{mask:?}");
        };
        check(Some(Ipv4Addr::new(255, 255, 255, 0)), "10.1.2.3/24");
        check(Some(Ipv4Addr::new(255, 255, 240, 0)), "10.1.2.3/20");
        check(Some(Ipv4Addr::new(255, 0, 255, 0)), "10.1.2.3/32");
        check(None, "10.1.2.3/32");
    }

    #[test]
    fn the_host_lists_no_loopback_unless_named() {
        let listed = list_interfaces().unwrap();
        assert!(listed.iter().all(|i| !i.loopback && i.name != "lo"));
        assert!(listed.iter().all(|i| !i.addrs.is_empty() && i.index > 0));
        assert_eq!(
            names(&dhcp_interfaces(&[]).unwrap()),
            names(&listed),
            "the default is list_interfaces"
        );
        // Every Linux host has lo with 127.0.0.1, even in an empty namespace
        // once it is up; served only when named.
        let lo = dhcp_interfaces(&wanted(&["lo"])).unwrap();
        assert_eq!(names(&lo), ["lo"]);
        assert!(lo[0].loopback);
        assert!(lo[0].addrs.iter().any(|a| a.addr() == Ipv4Addr::LOCALHOST));
        assert_eq!(lo[0].index, if_nametoindex("lo").unwrap());
        let err = dhcp_interfaces(&wanted(&["no-such-if0"])).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("\"no-such-if0\""), "{message}");
        assert!(message.contains("lo"), "{message}");
    }
}
