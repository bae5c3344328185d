//! Shared validation rules: the error type, its stable codes, and the checks more than one kind
//! uses (names, MAC addresses, IPv4 host addresses, lengths, counts).
//!
//! Every check returns the first problem it finds as a [`ValidationError`] whose `field` is a path
//! into the object as the client sent it (`pools[1].end`, `hardware_addrs[0]`, `params.ntp`), so a
//! UI can point at the offending input.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::error_code::Code;

/// The stable error codes, from the one table ([`crate::error_code`]): the model names its
/// validation codes through it.
pub use crate::error_code as code;

/// Why an object was refused. `field` is a path into the object as sent (`pools[1].end`), empty
/// when the problem is with the whole document; `code` is one of [`code`]; `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message} ({code})")]
pub struct ValidationError {
    pub field: String,
    pub code: &'static Code,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, code: &'static Code, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

/// Longest name of most kinds: a DNS label, so a name can be a hostname label or a single URL/path
/// segment without escaping.
pub const MAX_NAME_LEN: usize = 63;
/// Machine names may be fully qualified host names.
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Descriptions are for people; anything longer is a mistake or abuse of the replicated state.
pub const MAX_DESCRIPTION_LEN: usize = 4096;
/// Template bodies (iPXE scripts, kickstarts, Ignition configs) are a few KiB; larger ones are
/// composed with `{% include %}`. The bound is on parse time as much as on size: tera parses
/// roughly 0.2–1.6 MB/s depending on tag density (measured, release build), and every write of a
/// template is parsed before it is accepted.
pub const MAX_TEMPLATE_LEN: usize = 64 << 10;
/// Bounds on list lengths, so one object cannot blow up the index or a render.
pub const MAX_HARDWARE_ADDRS: usize = 32;
pub const MAX_PROFILES: usize = 64;
pub const MAX_PARAMS: usize = 1024;
pub const MAX_META: usize = 64;
pub const MAX_META_VALUE_LEN: usize = 1024;

/// The name rule shared by every kind: 1..=`max` characters from `[A-Za-z0-9._-]`, starting with
/// a letter or digit. Names are URL path segments and index keys, so no whitespace, no `/`, and
/// never `.` or `..`.
pub fn check_name_len(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(
            field,
            code::INVALID_NAME,
            "name must not be empty",
        ));
    }
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            code::INVALID_NAME,
            format!("name is longer than {max} characters"),
        ));
    }
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok {
        return Err(ValidationError::new(
            field,
            code::INVALID_NAME,
            format!("name {value:?} must start with a letter or digit"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(ValidationError::new(
            field,
            code::INVALID_NAME,
            format!("name {value:?} contains {bad:?}; allowed are letters, digits, '.', '-', '_'"),
        ));
    }
    Ok(())
}

/// [`check_name_len`] with the usual limit of [`MAX_NAME_LEN`].
pub fn check_name(field: &str, value: &str) -> Result<(), ValidationError> {
    check_name_len(field, value, MAX_NAME_LEN)
}

/// Checks every name in a list, reporting `field[i]`.
pub fn check_names(field: &str, values: &[String]) -> Result<(), ValidationError> {
    for (i, v) in values.iter().enumerate() {
        check_name(&format!("{field}[{i}]"), v)?;
    }
    Ok(())
}

pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            code::TOO_LONG,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(())
}

pub fn check_description(value: &str) -> Result<(), ValidationError> {
    check_len("description", value, MAX_DESCRIPTION_LEN)
}

pub fn check_count(field: &str, count: usize, max: usize) -> Result<(), ValidationError> {
    if count > max {
        return Err(ValidationError::new(
            field,
            code::TOO_MANY,
            format!("at most {max} entries allowed, got {count}"),
        ));
    }
    Ok(())
}

pub fn check_required(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(
            field,
            code::REQUIRED,
            "must not be empty",
        ));
    }
    Ok(())
}

/// Parses an Ethernet MAC address in any of the spellings operators paste: `aa:bb:cc:dd:ee:ff`,
/// `AA-BB-CC-DD-EE-FF`, `aabb.ccdd.eeff` (Cisco) or bare `aabbccddeeff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let hex: String = if s.len() == 17 {
        let sep = s.as_bytes()[2];
        if sep != b':' && sep != b'-' {
            return None;
        }
        // Separators must sit exactly between the pairs, all the same character.
        for (i, b) in s.bytes().enumerate() {
            if i % 3 == 2 && b != sep {
                return None;
            }
        }
        s.split(sep as char).collect()
    } else if s.len() == 14 {
        let b = s.as_bytes();
        if b[4] != b'.' || b[9] != b'.' {
            return None;
        }
        s.split('.').collect()
    } else {
        s.to_string()
    };
    if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 6];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Normalizes a MAC to lowercase colon form, refusing what can never be a station address.
/// A DHCP client's `chaddr` is always unicast, so an all-zero or group (multicast/broadcast)
/// address in a record is a typo that would silently match nothing.
pub fn normalize_mac(field: &str, s: &str) -> Result<String, ValidationError> {
    let mac = parse_mac(s.trim()).ok_or_else(|| {
        ValidationError::new(
            field,
            code::INVALID_MAC,
            format!("{s:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"),
        )
    })?;
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err(ValidationError::new(
            field,
            code::INVALID_MAC,
            format!("{s:?} is not a unicast MAC address"),
        ));
    }
    Ok(format_mac(&mac))
}

/// An address that can be assigned to a host: not 0.0.0.0, not broadcast, not loopback or
/// multicast. Checking here keeps such values out of the lease and reservation tables entirely.
pub fn check_host_address(field: &str, addr: Ipv4Addr) -> Result<(), ValidationError> {
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_loopback() || addr.is_multicast() {
        return Err(ValidationError::new(
            field,
            code::INVALID_ADDRESS,
            format!("{addr} cannot be assigned to a host"),
        ));
    }
    Ok(())
}

/// A boot artefact path or URL (kernel, initrd, loader): non-empty, no whitespace or control
/// characters (they would split a kernel command line or an iPXE `kernel` line), and no `..`
/// segment (it would escape the boot namespace).
pub fn check_boot_path(field: &str, value: &str) -> Result<(), ValidationError> {
    check_required(field, value)?;
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::new(
            field,
            code::INVALID_PATH,
            format!("{value:?} contains whitespace or control characters"),
        ));
    }
    if value.split('/').any(|seg| seg == "..") {
        return Err(ValidationError::new(
            field,
            code::INVALID_PATH,
            format!("{value:?} contains a '..' segment"),
        ));
    }
    check_len(field, value, 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One check per concern: a MAC spelling either normalizes to `expected` or is refused.
    fn check_mac(input: &str, expected: Option<&str>) {
        let got = normalize_mac("hardware_addrs[0]", input);
        match expected {
            Some(want) => assert_eq!(got.as_deref(), Ok(want), "input {input:?}"),
            None => {
                let err = got.expect_err(input);
                assert_eq!(err.code, code::INVALID_MAC, "input {input:?}");
                assert_eq!(err.field, "hardware_addrs[0]");
            }
        }
    }

    #[test]
    fn mac_spellings_normalize_to_lower_colon_form() {
        check_mac("AA:BB:CC:DD:EE:F0", Some("aa:bb:cc:dd:ee:f0"));
        check_mac("aa-bb-cc-dd-ee-f0", Some("aa:bb:cc:dd:ee:f0"));
        check_mac("AABB.CCDD.EEF0", Some("aa:bb:cc:dd:ee:f0"));
        check_mac("aabbccddeef0", Some("aa:bb:cc:dd:ee:f0"));
        check_mac(" 52:54:00:12:34:56 ", Some("52:54:00:12:34:56"));
    }

    #[test]
    fn bad_macs_are_refused() {
        check_mac("", None);
        check_mac("aa:bb:cc:dd:ee", None);
        check_mac("aa:bb:cc:dd:ee:gg", None);
        check_mac("aa:bb-cc:dd:ee:f0", None);
        check_mac("aabb:ccdd:eef0", None);
        check_mac("aa:bb:cc:dd:ee:f0:00", None);
        check_mac("00:00:00:00:00:00", None);
        check_mac("ff:ff:ff:ff:ff:ff", None);
        check_mac("01:00:5e:00:00:01", None);
        check_mac("+a:bb:cc:dd:ee:f0", None);
    }

    fn check_name_rule(input: &str, ok: bool) {
        let got = check_name("name", input);
        if ok {
            assert_eq!(got, Ok(()), "input {input:?}");
        } else {
            let err = got.expect_err(input);
            assert_eq!((err.field.as_str(), err.code), ("name", code::INVALID_NAME));
        }
    }

    #[test]
    fn names() {
        check_name_rule("discovery", true);
        check_name_rule("fcos-39.x86_64", true);
        check_name_rule("A1", true);
        check_name_rule(&"a".repeat(63), true);
        check_name_rule(&"a".repeat(64), false);
        check_name_rule("", false);
        check_name_rule("has space", false);
        check_name_rule("a/b", false);
        check_name_rule(".", false);
        check_name_rule("..", false);
        check_name_rule("-leading", false);
        check_name_rule("tab\t", false);
        check_name_rule("ünïcode", false);
    }

    #[test]
    fn host_addresses_and_boot_paths() {
        assert!(check_host_address("address", Ipv4Addr::new(10, 0, 0, 5)).is_ok());
        for bad in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(224, 0, 0, 1),
        ] {
            let err = check_host_address("address", bad).expect_err("refused");
            assert_eq!(err.code, code::INVALID_ADDRESS);
        }
        assert!(check_boot_path("kernel", "fcos/vmlinuz").is_ok());
        assert!(check_boot_path("kernel", "http://x/y/vmlinuz").is_ok());
        for bad in ["", "a b", "../etc/passwd", "a/../../b", "x\ny"] {
            assert!(check_boot_path("kernel", bad).is_err(), "{bad:?}");
        }
    }
}
