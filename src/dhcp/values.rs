//! Turning an operator's option value (text, after template rendering) into
//! the bytes of a DHCP option, by the option's type in RFC 2132 and its
//! successors. An option Cradle has no type for takes `hex:` bytes or the
//! text itself.

use std::net::Ipv4Addr;

/// Why a value does not fit its option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option {code}: {reason}")]
pub struct ValueError {
    pub code: u8,
    pub reason: String,
}

enum Kind {
    Address,
    Addresses,
    U32,
    I32,
    U16,
    U8,
    Flag,
    Text,
    DomainList,
    ClasslessRoutes,
}

fn kind_of(code: u8) -> Option<Kind> {
    Some(match code {
        1 | 16 | 28 | 32 | 50 | 54 | 118 => Kind::Address,
        3..=11 | 41 | 42 | 44 | 45 | 48 | 49 | 65 | 68..=76 | 150 => Kind::Addresses,
        24 | 35 | 38 | 51 | 58 | 59 => Kind::U32,
        2 => Kind::I32,
        13 | 22 | 26 | 57 => Kind::U16,
        23 | 37 | 46 => Kind::U8,
        19 | 20 | 27 | 29 | 30 | 31 | 34 | 36 | 39 => Kind::Flag,
        12 | 14 | 15 | 17 | 18 | 40 | 47 | 56 | 60 | 62 | 64 | 66 | 67 | 114 => Kind::Text,
        119 => Kind::DomainList,
        121 => Kind::ClasslessRoutes,
        _ => return None,
    })
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split([',', ' ', '\n', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The option bytes for `text` (already rendered). Empty bytes are allowed
/// only where the option allows them (none of the typed ones).
pub fn encode(code: u8, text: &str) -> Result<Vec<u8>, ValueError> {
    let err = |reason: String| ValueError { code, reason };
    let text = text.trim();
    if let Some(hex) = text.strip_prefix("hex:") {
        let clean: String = hex
            .chars()
            .filter(|c| !matches!(c, ':' | ' ' | '-'))
            .collect();
        return hex::decode(&clean).map_err(|e| err(format!("{hex:?} is not hex bytes: {e}")));
    }
    let address = |s: &str| {
        s.parse::<Ipv4Addr>()
            .map_err(|_| err(format!("{s:?} is not an IPv4 address")))
    };
    let number = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| err(format!("{text:?} is not a number")))
    };
    let bytes = match kind_of(code) {
        Some(Kind::Address) => address(text)?.octets().to_vec(),
        Some(Kind::Addresses) => {
            let mut out = Vec::new();
            for item in items(text) {
                out.extend(address(item)?.octets());
            }
            if out.is_empty() {
                return Err(err("needs at least one address".into()));
            }
            out
        }
        Some(Kind::U32) => u32::try_from(number(text)?)
            .map_err(|_| err(format!("{text} is out of range 0..=4294967295")))?
            .to_be_bytes()
            .to_vec(),
        Some(Kind::I32) => i32::try_from(number(text)?)
            .map_err(|_| err(format!("{text} is out of range for a signed 32-bit value")))?
            .to_be_bytes()
            .to_vec(),
        Some(Kind::U16) => u16::try_from(number(text)?)
            .map_err(|_| err(format!("{text} is out of range 0..=65535")))?
            .to_be_bytes()
            .to_vec(),
        Some(Kind::U8) => vec![u8::try_from(number(text)?)
            .map_err(|_| err(format!("{text} is out of range 0..=255")))?],
        Some(Kind::Flag) => match text {
            "1" | "true" | "on" | "yes" => vec![1],
            "0" | "false" | "off" | "no" => vec![0],
            _ => return Err(err(format!("{text:?} is not true or false"))),
        },
        Some(Kind::Text) => text.as_bytes().to_vec(),
        Some(Kind::DomainList) => {
            let mut out = Vec::new();
            for name in items(text) {
                for label in name.trim_end_matches('.').split('.') {
                    if label.is_empty() || label.len() > 63 {
                        return Err(err(format!("{name:?} is not a domain name")));
                    }
                    out.push(label.len() as u8);
                    out.extend(label.as_bytes());
                }
                out.push(0);
            }
            out
        }
        Some(Kind::ClasslessRoutes) => {
            // "10.0.0.0/8 198.18.0.1, 0.0.0.0/0 198.18.0.254" (RFC 3442).
            let mut out = Vec::new();
            for route in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let mut parts = route.split_whitespace();
                let (Some(dest), Some(gateway), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(err(format!(
                        "{route:?} is not \"<network>/<len> <router>\""
                    )));
                };
                let net: ipnet::Ipv4Net = dest
                    .parse()
                    .map_err(|_| err(format!("{dest:?} is not a network")))?;
                let len = net.prefix_len();
                out.push(len);
                let significant = usize::from(len.div_ceil(8));
                out.extend(&net.network().octets()[..significant]);
                out.extend(address(gateway)?.octets());
            }
            out
        }
        None => text.as_bytes().to_vec(),
    };
    if bytes.is_empty() && !matches!(kind_of(code), Some(Kind::Text) | None) {
        return Err(err("empty value".into()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values() {
        assert_eq!(encode(1, "255.255.255.0").unwrap(), [255, 255, 255, 0]);
        assert_eq!(
            encode(6, "198.18.0.1, 198.18.0.2").unwrap(),
            [198, 18, 0, 1, 198, 18, 0, 2]
        );
        assert_eq!(encode(26, "1500").unwrap(), [5, 220]);
        assert_eq!(encode(2, "-3600").unwrap(), (-3600i32).to_be_bytes());
        assert_eq!(encode(19, "true").unwrap(), [1]);
        assert_eq!(encode(15, "lab.example").unwrap(), b"lab.example");
        assert_eq!(
            encode(119, "a.lab, lab").unwrap(),
            b"\x01a\x03lab\x00\x03lab\x00".to_vec()
        );
        assert_eq!(
            encode(121, "10.0.0.0/8 198.18.0.1, 0.0.0.0/0 198.18.0.254").unwrap(),
            [8, 10, 198, 18, 0, 1, 0, 198, 18, 0, 254]
        );
        assert_eq!(encode(43, "hex:06:01:08").unwrap(), [6, 1, 8]);
        assert_eq!(encode(224, "anything").unwrap(), b"anything");
    }

    #[test]
    fn values_that_do_not_fit_are_refused() {
        for (code, text) in [
            (1, "255.255.255"),
            (3, ""),
            (3, "router"),
            (26, "70000"),
            (26, "-1"),
            (51, "soon"),
            (23, "256"),
            (19, "maybe"),
            (119, "a..b"),
            (121, "10.0.0.0/8"),
            (121, "10.0.0.0/33 1.2.3.4"),
            (43, "hex:zz"),
        ] {
            assert!(encode(code, text).is_err(), "{code} {text:?}");
        }
    }
}
