//! The DHCPv4 packet (RFC 2131 §2): strict parsing of what a client or
//! relay sends, encoding of what the server answers, the reply skeleton of
//! RFC 2131 table 3, and typed reads of the options the server acts on.
//!
//! Parsing refuses whatever it would otherwise have to guess at (an option
//! overrunning its area, a fixed-length option of another length, a
//! malformed relay agent option, option 52 inside an overloaded field) and
//! names the reason with a stable label for the drop counter. It is lenient
//! only where nothing is misread: PAD anywhere, and no END after the last
//! option (several PXE ROMs send none).

use std::net::Ipv4Addr;

use thiserror::Error;

use super::option::{lay_out, read_area, write_area, Area, AreaError};
pub use super::option::{opt, Options};

/// The largest packet accepted (an Ethernet MTU's worth of UDP payload and
/// more); anything longer is refused before it is read.
pub const MAX_PACKET_BYTES: usize = 1500;
/// The smallest legal maximum message size (option 57, RFC 2132 §9.10):
/// an IP datagram's length, headers included.
pub const MIN_MAX_MESSAGE_BYTES: usize = 576;
/// IPv4 and UDP headers, which option 57's size includes and a UDP payload
/// does not.
const IP_UDP_HEADER_BYTES: usize = 28;
/// The UDP payload every DHCP client accepts: a 576-byte datagram less its
/// headers (RFC 2131 §2: an options field of at least 312 bytes). The
/// encoder never limits itself below it.
pub const MIN_REPLY_BYTES: usize = MIN_MAX_MESSAGE_BYTES - IP_UDP_HEADER_BYTES;
/// Replies are padded to this length: the BOOTP minimum (RFC 951 / RFC 1542
/// §2.1), below which some relays and PXE ROMs drop a packet.
pub const MIN_PACKET_BYTES: usize = 300;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const SNAME_AT: usize = 44;
const SNAME_BYTES: usize = 64;
const FILE_AT: usize = 108;
const FILE_BYTES: usize = 128;
const COOKIE_AT: usize = 236;
const OPTIONS_AT: usize = 240;
const CHADDR_BYTES: usize = 16;
/// Ethernet (RFC 1700 hardware type 1) and its address length.
const HTYPE_ETHERNET: u8 = 1;
const ETHERNET_ADDR_BYTES: u8 = 6;
const FLAG_BROADCAST: u16 = 0x8000;

/// BOOTP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// BOOTREQUEST (1): client or relay to server.
    Request,
    /// BOOTREPLY (2): server to client or relay.
    Reply,
}

/// DHCP message type (option 53, RFC 2132 §9.6).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Discover = 1,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
}

impl MessageType {
    pub fn from_u8(value: u8) -> Option<MessageType> {
        Some(match value {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }

    /// Lower-case name, for logs and counter labels.
    pub fn name(self) -> &'static str {
        match self {
            MessageType::Discover => "discover",
            MessageType::Offer => "offer",
            MessageType::Request => "request",
            MessageType::Decline => "decline",
            MessageType::Ack => "ack",
            MessageType::Nak => "nak",
            MessageType::Release => "release",
            MessageType::Inform => "inform",
        }
    }
}

/// A DHCPv4 packet. `sname` and `file` hold the fields' text without NUL
/// padding, and are empty when the fields carried options (option 52). The
/// options never contain 52 itself: overload is how a packet is laid out,
/// which `parse` undoes and `encode` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub op: Op,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// At most 64 bytes.
    pub sname: Vec<u8>,
    /// At most 128 bytes.
    pub file: Vec<u8>,
    pub options: Options,
}

/// Relay agent information (option 82, RFC 3046), the sub-options the
/// server acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayAgent {
    pub circuit_id: Option<Vec<u8>>,
    pub remote_id: Option<Vec<u8>>,
    /// Sub-option 5 (RFC 3527): the client's link when giaddr is not on it.
    pub link_selection: Option<Ipv4Addr>,
    /// Sub-option 11 (RFC 5107): the address the client must use as server
    /// identifier, because it talks to the relay.
    pub server_id_override: Option<Ipv4Addr>,
}

/// Why a packet was refused. Each has a stable [`reason`](Self::reason).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    #[error("packet of {len} bytes is over the {MAX_PACKET_BYTES}-byte limit")]
    Oversized { len: usize },
    #[error("packet of {len} bytes is shorter than the fixed header and magic cookie (240)")]
    Truncated { len: usize },
    #[error("op {0} is neither BOOTREQUEST (1) nor BOOTREPLY (2)")]
    BadOp(u8),
    #[error("hardware type {htype} with address length {hlen}")]
    BadHardwareAddress { htype: u8, hlen: u8 },
    #[error("no DHCP magic cookie")]
    BadMagic,
    #[error(transparent)]
    Option(AreaError),
    #[error("option 52 (overload) of {len} bytes or value {value} (want 1 byte, 1 to 3)")]
    BadOverload { len: usize, value: u8 },
    #[error("no DHCP message type (option 53)")]
    MissingMessageType,
    #[error("DHCP message type option of {len} bytes or value {value} (want 1 byte, 1 to 8)")]
    BadMessageType { len: usize, value: u8 },
    #[error("option {code} has {len} bytes, which is not a length it can have")]
    BadOptionLength { code: u8, len: usize },
    #[error("option {code}: {why}")]
    BadOptionValue { code: u8, why: &'static str },
    #[error("relay agent information (option 82): {0}")]
    BadRelayAgent(&'static str),
}

impl PacketError {
    /// Every label [`reason`](Self::reason) can return, so counters can be
    /// registered at zero.
    pub const REASONS: &'static [&'static str] = &[
        "oversized",
        "truncated",
        "bad_op",
        "bad_hardware_address",
        "bad_magic",
        "option_overrun",
        "overload_loop",
        "bad_overload",
        "missing_message_type",
        "bad_message_type",
        "bad_option_length",
        "bad_option_value",
        "bad_relay_agent",
    ];

    /// A stable snake_case label for the drop counter.
    pub fn reason(&self) -> &'static str {
        match self {
            PacketError::Oversized { .. } => "oversized",
            PacketError::Truncated { .. } => "truncated",
            PacketError::BadOp(_) => "bad_op",
            PacketError::BadHardwareAddress { .. } => "bad_hardware_address",
            PacketError::BadMagic => "bad_magic",
            PacketError::Option(AreaError::Overrun { .. }) => "option_overrun",
            PacketError::Option(AreaError::OverloadInField { .. }) => "overload_loop",
            PacketError::BadOverload { .. } => "bad_overload",
            PacketError::MissingMessageType => "missing_message_type",
            PacketError::BadMessageType { .. } => "bad_message_type",
            PacketError::BadOptionLength { .. } => "bad_option_length",
            PacketError::BadOptionValue { .. } => "bad_option_value",
            PacketError::BadRelayAgent(_) => "bad_relay_agent",
        }
    }
}

impl From<AreaError> for PacketError {
    fn from(e: AreaError) -> Self {
        PacketError::Option(e)
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("{field} has {len} bytes, over its {max}-byte field")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("options do not fit in {max_len} bytes even with file/sname overloaded")]
    TooLarge { max_len: usize },
}

fn ipv4_at(bytes: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}

fn ipv4_of(value: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(value).ok().map(Ipv4Addr::from)
}

/// A NUL-terminated text field's content (the whole field when it has no NUL).
fn c_string(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

/// Parses option 82's sub-options. Overrunning sub-options, a sub-option
/// the server reads given twice, or an address sub-option not of 4 bytes
/// would be misread, so they make the whole packet malformed.
fn parse_relay_agent(value: &[u8]) -> Result<RelayAgent, &'static str> {
    let mut agent = RelayAgent::default();
    let mut at = 0;
    while at < value.len() {
        let sub = value[at];
        let len = *value
            .get(at + 1)
            .ok_or("sub-option without a length byte")? as usize;
        let data = value
            .get(at + 2..at + 2 + len)
            .ok_or("sub-option overruns the option")?;
        let address = || ipv4_of(data).ok_or("address sub-option not of 4 bytes");
        let taken = match sub {
            opt::relay::CIRCUIT_ID => agent.circuit_id.replace(data.to_vec()).is_some(),
            opt::relay::REMOTE_ID => agent.remote_id.replace(data.to_vec()).is_some(),
            opt::relay::LINK_SELECTION => agent.link_selection.replace(address()?).is_some(),
            opt::relay::SERVER_ID_OVERRIDE => {
                agent.server_id_override.replace(address()?).is_some()
            }
            _ => false,
        };
        if taken {
            return Err("a sub-option the server reads appears twice");
        }
        at += 2 + len;
    }
    Ok(agent)
}

/// The checks on options the server reads by type: each accessor below
/// can then trust the length it finds.
fn check_options(options: &Options) -> Result<(), PacketError> {
    match options.get(opt::MESSAGE_TYPE) {
        None => return Err(PacketError::MissingMessageType),
        Some(&[value]) if MessageType::from_u8(value).is_some() => {}
        Some(value) => {
            return Err(PacketError::BadMessageType {
                len: value.len(),
                value: value.first().copied().unwrap_or(0),
            })
        }
    }
    for (code, value) in options.iter() {
        let len = value.len();
        let fits = match code {
            opt::REQUESTED_ADDRESS | opt::SERVER_IDENTIFIER | opt::SUBNET_SELECTION => len == 4,
            opt::MAX_MESSAGE_SIZE => len == 2,
            opt::CLIENT_ARCH => len >= 2 && len % 2 == 0,
            opt::CLIENT_UUID => len == 17,
            // RFC 2132 §9.14: at least a type and one byte. An empty
            // identifier would make every such client the same client.
            opt::CLIENT_ID => len >= 2,
            _ => true,
        };
        if !fits {
            return Err(PacketError::BadOptionLength { code, len });
        }
        if code == opt::CLIENT_UUID && value[0] != 0 {
            return Err(PacketError::BadOptionValue {
                code,
                why: "client machine identifier type is not 0 (UUID)",
            });
        }
    }
    if let Some(value) = options.get(opt::RELAY_AGENT) {
        parse_relay_agent(value).map_err(PacketError::BadRelayAgent)?;
    }
    Ok(())
}

impl Packet {
    /// A BOOTREQUEST from an Ethernet client with the given message type:
    /// the starting point of a client's packet (tests, probes).
    pub fn request(message_type: MessageType, xid: u32, mac: [u8; 6]) -> Packet {
        let mut chaddr = [0u8; CHADDR_BYTES];
        chaddr[..6].copy_from_slice(&mac);
        let mut options = Options::new();
        options.set(opt::MESSAGE_TYPE, vec![message_type as u8]);
        Packet {
            op: Op::Request,
            htype: HTYPE_ETHERNET,
            hlen: ETHERNET_ADDR_BYTES,
            hops: 0,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            sname: Vec::new(),
            file: Vec::new(),
            options,
        }
    }

    /// Parses a UDP payload. See the module doc for what is refused.
    pub fn parse(bytes: &[u8]) -> Result<Packet, PacketError> {
        let len = bytes.len();
        if len > MAX_PACKET_BYTES {
            return Err(PacketError::Oversized { len });
        }
        if len < OPTIONS_AT {
            return Err(PacketError::Truncated { len });
        }
        let op = match bytes[0] {
            1 => Op::Request,
            2 => Op::Reply,
            other => return Err(PacketError::BadOp(other)),
        };
        let (htype, hlen) = (bytes[1], bytes[2]);
        if hlen as usize > CHADDR_BYTES || (htype == HTYPE_ETHERNET && hlen != ETHERNET_ADDR_BYTES)
        {
            return Err(PacketError::BadHardwareAddress { htype, hlen });
        }
        if bytes[COOKIE_AT..OPTIONS_AT] != MAGIC_COOKIE {
            return Err(PacketError::BadMagic);
        }
        let sname_field = &bytes[SNAME_AT..SNAME_AT + SNAME_BYTES];
        let file_field = &bytes[FILE_AT..FILE_AT + FILE_BYTES];

        // RFC 2131 §4.1 / RFC 3396: options, then file, then sname, parts
        // of one option concatenated in that order.
        let mut options = Options::new();
        read_area(&bytes[OPTIONS_AT..], Area::Options, &mut options)?;
        let overload = match options.get(opt::OVERLOAD) {
            None => 0,
            Some(&[value @ 1..=3]) => value,
            Some(value) => {
                return Err(PacketError::BadOverload {
                    len: value.len(),
                    value: value.first().copied().unwrap_or(0),
                })
            }
        };
        options.remove(opt::OVERLOAD);
        let file = if overload & 1 != 0 {
            read_area(file_field, Area::File, &mut options)?;
            Vec::new()
        } else {
            c_string(file_field)
        };
        let sname = if overload & 2 != 0 {
            read_area(sname_field, Area::Sname, &mut options)?;
            Vec::new()
        } else {
            c_string(sname_field)
        };
        check_options(&options)?;

        let mut chaddr = [0u8; CHADDR_BYTES];
        chaddr.copy_from_slice(&bytes[28..28 + CHADDR_BYTES]);
        Ok(Packet {
            op,
            htype,
            hlen,
            hops: bytes[3],
            xid: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            secs: u16::from_be_bytes([bytes[8], bytes[9]]),
            flags: u16::from_be_bytes([bytes[10], bytes[11]]),
            ciaddr: ipv4_at(bytes, 12),
            yiaddr: ipv4_at(bytes, 16),
            siaddr: ipv4_at(bytes, 20),
            giaddr: ipv4_at(bytes, 24),
            chaddr,
            sname,
            file,
            options,
        })
    }

    /// Encodes with options in the options area; when they do not fit in
    /// `max_len` bytes of UDP payload and `file`/`sname` are empty,
    /// overloads into them (option 52), file first; options > 255 bytes
    /// split (RFC 3396). `max_len` is clamped to
    /// [`MIN_REPLY_BYTES`]..=[`MAX_PACKET_BYTES`]; for a reply pass the
    /// request's [`max_reply_bytes`](Self::max_reply_bytes). Message type
    /// goes first, the others in insertion order; a 52 in `options` is
    /// ignored. The result is padded to [`MIN_PACKET_BYTES`].
    pub fn encode(&self, max_len: usize) -> Result<Vec<u8>, EncodeError> {
        let max_len = max_len.clamp(MIN_REPLY_BYTES, MAX_PACKET_BYTES);
        for (field, value, max) in [
            ("sname", &self.sname, SNAME_BYTES),
            ("file", &self.file, FILE_BYTES),
        ] {
            if value.len() > max {
                return Err(EncodeError::FieldTooLong {
                    field,
                    len: value.len(),
                    max,
                });
            }
        }
        let message_type = self
            .options
            .get(opt::MESSAGE_TYPE)
            .map(|v| (opt::MESSAGE_TYPE, v));
        let list: Vec<(u8, &[u8])> = message_type
            .into_iter()
            .chain(
                self.options
                    .iter()
                    .filter(|(c, _)| *c != opt::MESSAGE_TYPE && *c != opt::OVERLOAD),
            )
            .collect();

        // The options area's room, less its END byte.
        let main_room = max_len - OPTIONS_AT - 1;
        let (main, file_parts, sname_parts) = match lay_out(&list, &[main_room], false) {
            Some(mut areas) => (areas.remove(0), None, None),
            None => {
                // Option 52 itself takes 3 bytes of the options area.
                let mut rooms = vec![main_room - 3];
                let mut fields = Vec::new();
                if self.file.is_empty() {
                    rooms.push(FILE_BYTES - 1);
                    fields.push(Area::File);
                }
                if self.sname.is_empty() {
                    rooms.push(SNAME_BYTES - 1);
                    fields.push(Area::Sname);
                }
                if fields.is_empty() {
                    return Err(EncodeError::TooLarge { max_len });
                }
                let mut areas = lay_out(&list, &rooms, false)
                    .or_else(|| lay_out(&list, &rooms, true))
                    .ok_or(EncodeError::TooLarge { max_len })?;
                let mut file_parts = None;
                let mut sname_parts = None;
                for (field, parts) in fields.into_iter().zip(areas.drain(1..)) {
                    // A field the options did not reach stays a plain field.
                    if parts.is_empty() {
                        continue;
                    }
                    match field {
                        Area::File => file_parts = Some(parts),
                        _ => sname_parts = Some(parts),
                    }
                }
                (areas.remove(0), file_parts, sname_parts)
            }
        };
        let overload = u8::from(file_parts.is_some()) | (u8::from(sname_parts.is_some()) << 1);

        let mut out = Vec::with_capacity(max_len);
        out.push(match self.op {
            Op::Request => 1,
            Op::Reply => 2,
        });
        out.extend_from_slice(&[self.htype, self.hlen, self.hops]);
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        for address in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&address.octets());
        }
        out.extend_from_slice(&self.chaddr);
        for (parts, text, size) in [
            (&sname_parts, &self.sname, SNAME_BYTES),
            (&file_parts, &self.file, FILE_BYTES),
        ] {
            let start = out.len();
            match parts {
                Some(parts) => write_area(parts, &mut out),
                None => out.extend_from_slice(text),
            }
            out.resize(start + size, 0);
        }
        out.extend_from_slice(&MAGIC_COOKIE);
        let mut main = main;
        if overload != 0 {
            let at = usize::from(main.first().is_some_and(|(c, _)| *c == opt::MESSAGE_TYPE));
            main.insert(at, (opt::OVERLOAD, std::slice::from_ref(&overload)));
        }
        write_area(&main, &mut out);
        if out.len() < MIN_PACKET_BYTES {
            out.resize(MIN_PACKET_BYTES, 0);
        }
        Ok(out)
    }

    /// The reply skeleton of RFC 2131 table 3: BOOTREPLY with the request's
    /// htype, hlen, xid, flags, giaddr and chaddr; ciaddr copied only into
    /// an ACK (the client's address when renewing, rebinding or informing);
    /// yiaddr, siaddr, sname and file left for the caller. Options: the
    /// message type, the client identifier echoed (RFC 6842) and the relay
    /// agent information echoed unchanged (RFC 3046 §2.2).
    pub fn new_reply(&self, message_type: MessageType) -> Packet {
        let mut options = Options::new();
        options.set(opt::MESSAGE_TYPE, vec![message_type as u8]);
        for echoed in [opt::CLIENT_ID, opt::RELAY_AGENT] {
            if let Some(value) = self.options.get(echoed) {
                options.set(echoed, value.to_vec());
            }
        }
        Packet {
            op: Op::Reply,
            htype: self.htype,
            hlen: self.hlen,
            hops: 0,
            xid: self.xid,
            secs: 0,
            flags: self.flags,
            ciaddr: if message_type == MessageType::Ack {
                self.ciaddr
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: self.giaddr,
            chaddr: self.chaddr,
            sname: Vec::new(),
            file: Vec::new(),
            options,
        }
    }

    pub fn message_type(&self) -> Option<MessageType> {
        match self.options.get(opt::MESSAGE_TYPE)? {
            &[value] => MessageType::from_u8(value),
            _ => None,
        }
    }

    pub fn broadcast_flag(&self) -> bool {
        self.flags & FLAG_BROADCAST != 0
    }

    /// `chaddr[..hlen]`.
    pub fn hardware_addr(&self) -> &[u8] {
        &self.chaddr[..usize::from(self.hlen).min(CHADDR_BYTES)]
    }

    /// The Ethernet address, when the hardware is Ethernet.
    pub fn mac(&self) -> Option<[u8; 6]> {
        if self.htype != HTYPE_ETHERNET || self.hlen != ETHERNET_ADDR_BYTES {
            return None;
        }
        <[u8; 6]>::try_from(&self.chaddr[..6]).ok()
    }

    /// The client's identity (RFC 2131 §4.2): option 61, else the hardware
    /// type followed by the hardware address.
    pub fn client_id(&self) -> Vec<u8> {
        match self.options.get(opt::CLIENT_ID) {
            Some(id) => id.to_vec(),
            None => {
                let mut id = vec![self.htype];
                id.extend_from_slice(self.hardware_addr());
                id
            }
        }
    }

    /// Option 50.
    pub fn requested_address(&self) -> Option<Ipv4Addr> {
        ipv4_of(self.options.get(opt::REQUESTED_ADDRESS)?)
    }

    /// Option 54.
    pub fn server_identifier(&self) -> Option<Ipv4Addr> {
        ipv4_of(self.options.get(opt::SERVER_IDENTIFIER)?)
    }

    /// Option 12 as text (invalid UTF-8 replaced, trailing NULs some
    /// clients send dropped), at most 63 characters: a DNS label's limit.
    pub fn hostname(&self) -> Option<String> {
        let raw = self.options.get(opt::HOSTNAME)?;
        let end = raw.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let name: String = String::from_utf8_lossy(&raw[..end])
            .chars()
            .take(63)
            .collect();
        (!name.is_empty()).then_some(name)
    }

    /// Option 55, empty when absent.
    pub fn parameter_request_list(&self) -> &[u8] {
        self.options
            .get(opt::PARAMETER_REQUEST_LIST)
            .unwrap_or_default()
    }

    /// Option 57; values under 576 are ignored (RFC 2132 §9.10: the minimum
    /// legal value).
    pub fn max_message_size(&self) -> Option<u16> {
        let value = self.options.get(opt::MAX_MESSAGE_SIZE)?;
        let size = u16::from_be_bytes(<[u8; 2]>::try_from(value).ok()?);
        (usize::from(size) >= MIN_MAX_MESSAGE_BYTES).then_some(size)
    }

    /// The largest UDP payload a reply to this request may have: option 57
    /// counts the IP datagram (RFC 2132 §9.10, as dnsmasq reads it), so its
    /// IP and UDP headers come off; without it, [`MIN_REPLY_BYTES`]. Never
    /// over [`MAX_PACKET_BYTES`], whatever the client claims (OVMF asks
    /// for 65280).
    pub fn max_reply_bytes(&self) -> usize {
        self.max_message_size()
            .map_or(MIN_REPLY_BYTES, |size| {
                usize::from(size) - IP_UDP_HEADER_BYTES
            })
            .min(MAX_PACKET_BYTES)
    }

    /// Option 60.
    pub fn vendor_class(&self) -> Option<&[u8]> {
        self.options.get(opt::VENDOR_CLASS)
    }

    /// Option 77 as received: iPXE sends `iPXE` without the RFC 3004
    /// length prefix, others send RFC 3004 framing.
    pub fn user_class(&self) -> Option<&[u8]> {
        self.options.get(opt::USER_CLASS)
    }

    /// Whether the client is iPXE (user class `iPXE`, raw or as one of the
    /// RFC 3004 classes).
    pub fn is_ipxe(&self) -> bool {
        const IPXE: &[u8] = b"iPXE";
        let Some(class) = self.user_class() else {
            return false;
        };
        if class == IPXE {
            return true;
        }
        let mut at = 0;
        while let Some(&len) = class.get(at) {
            match class.get(at + 1..at + 1 + usize::from(len)) {
                Some(entry) if entry == IPXE => return true,
                Some(_) => at += 1 + usize::from(len),
                None => return false,
            }
        }
        false
    }

    /// Option 93 (RFC 4578): the first architecture type listed.
    pub fn client_arch(&self) -> Option<u16> {
        match self.options.get(opt::CLIENT_ARCH)? {
            [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
            _ => None,
        }
    }

    /// Option 97 (RFC 4578): the machine's UUID.
    pub fn client_uuid(&self) -> Option<[u8; 16]> {
        match self.options.get(opt::CLIENT_UUID)? {
            [0, uuid @ ..] => <[u8; 16]>::try_from(uuid).ok(),
            _ => None,
        }
    }

    /// Option 97 read as the machine's SMBIOS UUID, as `dmidecode` and the
    /// VM's configuration print it. Firmware sends the SMBIOS bytes as
    /// stored, first three fields little-endian (seen from iPXE and OVMF
    /// alike in `tests/data/dhcp/`), so [`client_uuid`](Self::client_uuid)'s
    /// raw bytes do not spell the familiar form.
    pub fn client_uuid_smbios(&self) -> Option<uuid::Uuid> {
        self.client_uuid().map(uuid::Uuid::from_bytes_le)
    }

    /// Option 82. `parse` refuses a malformed one, so this is `None` on a
    /// parsed packet only when the option is absent.
    pub fn relay_agent(&self) -> Option<RelayAgent> {
        parse_relay_agent(self.options.get(opt::RELAY_AGENT)?).ok()
    }

    /// Option 118 (RFC 3011).
    pub fn subnet_selection(&self) -> Option<Ipv4Addr> {
        ipv4_of(self.options.get(opt::SUBNET_SELECTION)?)
    }
}

#[cfg(test)]
mod tests;
