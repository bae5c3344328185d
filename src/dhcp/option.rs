//! DHCPv4 options: the option codes used by name, the [`Options`] set a
//! packet carries, and the walk over one option area (the `options` field,
//! or an overloaded `file`/`sname` field) with RFC 3396 concatenation.
//!
//! The walk is ours rather than a library's because what a server relies on
//! must be read exactly: an option that overruns its area is an error (not
//! the silent end of the list), and the `file`/`sname` fields carry options
//! when option 52 says so.

use thiserror::Error;

/// Option numbers used by name (RFC 2132 and later).
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const TIME_OFFSET: u8 = 2;
    pub const ROUTER: u8 = 3;
    pub const DOMAIN_NAME_SERVER: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const BOOT_FILE_SIZE: u8 = 13;
    pub const DOMAIN_NAME: u8 = 15;
    pub const ROOT_PATH: u8 = 17;
    pub const INTERFACE_MTU: u8 = 26;
    pub const BROADCAST_ADDRESS: u8 = 28;
    pub const NTP_SERVERS: u8 = 42;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_ADDRESS: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_IDENTIFIER: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER_NAME: u8 = 66;
    pub const BOOTFILE_NAME: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const CLIENT_FQDN: u8 = 81;
    pub const RELAY_AGENT: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const SUBNET_SELECTION: u8 = 118;
    pub const DOMAIN_SEARCH: u8 = 119;
    pub const CLASSLESS_STATIC_ROUTE: u8 = 121;
    /// iPXE's encapsulated options (its feature flags live here).
    pub const IPXE_ENCAPSULATED: u8 = 175;
    pub const END: u8 = 255;

    /// Sub-options of the relay agent information option (82).
    pub mod relay {
        pub const CIRCUIT_ID: u8 = 1;
        pub const REMOTE_ID: u8 = 2;
        /// RFC 3527.
        pub const LINK_SELECTION: u8 = 5;
        /// RFC 5107.
        pub const SERVER_ID_OVERRIDE: u8 = 11;
    }
}

/// The options of one packet: one entry per code, in first-seen order, the
/// parts of an option that appeared several times concatenated (RFC 3396).
///
/// Equality ignores order: no option's meaning depends on its position, and
/// the encoder moves the message type first.
#[derive(Debug, Clone, Default)]
pub struct Options {
    entries: Vec<(u8, Vec<u8>)>,
}

impl PartialEq for Options {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .all(|(code, value)| other.get(*code) == Some(value.as_slice()))
    }
}

impl Eq for Options {}

impl Options {
    pub fn new() -> Options {
        Options::default()
    }

    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    /// Replaces the value of `code`, keeping its position, or appends it.
    /// PAD and END are framing, not options: setting them does nothing.
    pub fn set(&mut self, code: u8, value: Vec<u8>) {
        if code == opt::PAD || code == opt::END {
            return;
        }
        match self.entries.iter_mut().find(|(c, _)| *c == code) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((code, value)),
        }
    }

    pub fn remove(&mut self, code: u8) {
        self.entries.retain(|(c, _)| *c != code);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.entries.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends `part` to `code`'s value (RFC 3396: every instance of an
    /// option is a part of one value, in the order met).
    pub(crate) fn append(&mut self, code: u8, part: &[u8]) {
        match self.entries.iter_mut().find(|(c, _)| *c == code) {
            Some(entry) => entry.1.extend_from_slice(part),
            None => self.entries.push((code, part.to_vec())),
        }
    }
}

/// Which field an option area is, for error messages and for the rule that
/// only the `options` field may carry option 52.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Options,
    File,
    Sname,
}

impl std::fmt::Display for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Area::Options => "options",
            Area::File => "file",
            Area::Sname => "sname",
        })
    }
}

/// Why an option area could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AreaError {
    #[error("option {code} in the {area} field overruns it (offset {offset})")]
    Overrun { code: u8, area: Area, offset: usize },
    #[error("option 52 (overload) inside the overloaded {area} field")]
    OverloadInField { area: Area },
}

/// Reads one option area into `out`. PAD bytes are skipped; END stops the
/// walk and whatever follows it is padding. A missing END is accepted:
/// several PXE ROMs end the last option at the end of the packet, and
/// nothing is misread by that. An option whose length byte or value runs
/// past the area is an error: truncating it would misread it.
pub(crate) fn read_area(area: &[u8], which: Area, out: &mut Options) -> Result<(), AreaError> {
    let mut at = 0;
    while at < area.len() {
        let code = area[at];
        match code {
            opt::PAD => {
                at += 1;
                continue;
            }
            opt::END => return Ok(()),
            _ => {}
        }
        let overrun = AreaError::Overrun {
            code,
            area: which,
            offset: at,
        };
        let len = *area.get(at + 1).ok_or(overrun.clone())? as usize;
        let value = area.get(at + 2..at + 2 + len).ok_or(overrun)?;
        if code == opt::OVERLOAD && which != Area::Options {
            return Err(AreaError::OverloadInField { area: which });
        }
        out.append(code, value);
        at += 2 + len;
    }
    Ok(())
}

/// One option part ready to be written: a code and at most 255 bytes.
type Part<'a> = (u8, &'a [u8]);

/// Space an option takes when written whole (RFC 3396 parts of ≤ 255).
fn written_len(value: &[u8]) -> usize {
    if value.is_empty() {
        2
    } else {
        value.len() + 2 * value.len().div_ceil(255)
    }
}

/// Lays `options` out over areas of the given capacities (each excluding
/// its END byte), in order. An option that fits whole goes whole into the
/// current area; one that does not is split (RFC 3396) only when it is
/// longer than one part could be, or when `split_any` is set (a last resort:
/// a client that ignores RFC 3396 reads a split short option wrongly).
/// Returns the parts per area, or `None` when they do not fit.
pub(crate) fn lay_out<'a>(
    options: &[(u8, &'a [u8])],
    capacities: &[usize],
    split_any: bool,
) -> Option<Vec<Vec<Part<'a>>>> {
    let mut areas: Vec<Vec<Part<'a>>> = vec![Vec::new(); capacities.len()];
    let mut current = 0;
    let mut room = *capacities.first()?;
    for &(code, value) in options {
        let whole = written_len(value);
        if whole > room && !(split_any || value.len() > 255) {
            // Move to the next area that can hold it whole.
            loop {
                current += 1;
                room = *capacities.get(current)?;
                if whole <= room {
                    break;
                }
            }
        }
        if value.is_empty() {
            while room < 2 {
                current += 1;
                room = *capacities.get(current)?;
            }
            areas[current].push((code, value));
            room -= 2;
            continue;
        }
        let mut rest = value;
        while !rest.is_empty() {
            // A part needs its two header bytes and at least one byte.
            while room < 3 {
                current += 1;
                room = *capacities.get(current)?;
            }
            let take = rest.len().min(255).min(room - 2);
            areas[current].push((code, &rest[..take]));
            room -= take + 2;
            rest = &rest[take..];
        }
    }
    Some(areas)
}

/// Writes `parts` then END.
pub(crate) fn write_area(parts: &[Part<'_>], out: &mut Vec<u8>) {
    for (code, value) in parts {
        out.push(*code);
        // Parts are at most 255 bytes by construction in `lay_out`.
        out.push(value.len().min(255) as u8);
        out.extend_from_slice(value);
    }
    out.push(opt::END);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], which: Area) -> Result<Options, AreaError> {
        let mut out = Options::new();
        read_area(bytes, which, &mut out).map(|()| out)
    }

    #[test]
    fn pads_are_skipped_and_end_stops_the_walk() {
        let options = read(&[0, 0, 53, 1, 1, 0, 255, 99, 99, 99], Area::Options).unwrap();
        assert_eq!(options.get(53), Some(&[1u8][..]));
        assert_eq!(options.len(), 1);
    }

    #[test]
    fn a_missing_end_is_accepted() {
        let options = read(&[53, 1, 3, 12, 2, b'a', b'b'], Area::Options).unwrap();
        assert_eq!(options.get(12), Some(&b"ab"[..]));
    }

    #[test]
    fn an_option_running_past_its_area_is_an_error() {
        assert!(matches!(
            read(&[53, 1, 3, 12, 5, b'a'], Area::Options),
            Err(AreaError::Overrun {
                code: 12,
                offset: 3,
                ..
            })
        ));
        // A code with no length byte.
        assert!(matches!(
            read(&[53, 1, 3, 12], Area::Options),
            Err(AreaError::Overrun { code: 12, .. })
        ));
    }

    #[test]
    fn repeated_options_are_concatenated_in_order() {
        let options = read(&[43, 2, 1, 2, 53, 1, 1, 43, 1, 3, 255], Area::Options).unwrap();
        assert_eq!(options.get(43), Some(&[1u8, 2, 3][..]));
        let order: Vec<u8> = options.iter().map(|(c, _)| c).collect();
        assert_eq!(order, vec![43, 53]);
    }

    #[test]
    fn overload_outside_the_options_field_is_an_error() {
        assert_eq!(
            read(&[52, 1, 3, 255], Area::File),
            Err(AreaError::OverloadInField { area: Area::File })
        );
        assert!(read(&[52, 1, 3, 255], Area::Options).is_ok());
    }

    #[test]
    fn equality_ignores_order() {
        let mut a = Options::new();
        a.set(1, vec![1]);
        a.set(2, vec![2]);
        let mut b = Options::new();
        b.set(2, vec![2]);
        b.set(1, vec![1]);
        assert_eq!(a, b);
        b.set(1, vec![9]);
        assert_ne!(a, b);
        b.remove(1);
        assert_ne!(a, b);
    }

    #[test]
    fn set_replaces_in_place_and_ignores_framing_codes() {
        let mut options = Options::new();
        options.set(3, vec![1]);
        options.set(6, vec![2]);
        options.set(3, vec![3]);
        options.set(opt::PAD, vec![]);
        options.set(opt::END, vec![]);
        let all: Vec<(u8, Vec<u8>)> = options.iter().map(|(c, v)| (c, v.to_vec())).collect();
        assert_eq!(all, vec![(3, vec![3]), (6, vec![2])]);
    }

    #[test]
    fn lay_out_keeps_short_options_whole_and_splits_long_ones() {
        let long = vec![7u8; 300];
        let short = [1u8; 10];
        let options = [(43u8, &long[..]), (12u8, &short[..])];
        let areas = lay_out(&options, &[100, 300], false).unwrap();
        // The long option fills the first area (98 bytes) and goes on.
        assert_eq!(areas[0], vec![(43, &long[..98])]);
        assert_eq!(areas[1], vec![(43, &long[98..]), (12, &short[..])]);
        // A short option that does not fit whole moves to the next area.
        let options = [(12u8, &short[..]), (13u8, &short[..])];
        let areas = lay_out(&options, &[20, 12], false).unwrap();
        assert_eq!(areas[0], vec![(12, &short[..])]);
        assert_eq!(areas[1], vec![(13, &short[..])]);
        // ... unless splitting is allowed.
        let areas = lay_out(&options, &[20, 12], true).unwrap();
        assert_eq!(areas[0], vec![(12, &short[..]), (13, &short[..6])]);
        assert!(lay_out(&options, &[20, 11], false).is_none());
    }
}
