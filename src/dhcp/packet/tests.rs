//! Packet codec tests: packets shaped like what real clients send, built
//! byte by byte (not with the encoder under test), every refusal with its
//! reason, overload and long options both ways, a cross-check of what we
//! encode against dhcproto's decoder, and properties over arbitrary input.

use super::*;
use dhcproto::v4 as proto;
use dhcproto::{Decodable, Decoder, Encodable};
use proptest::prelude::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const UUID: [u8; 16] = [
    0x4c, 0x4c, 0x45, 0x44, 0x00, 0x35, 0x51, 0x10, 0x80, 0x48, 0xb4, 0xc0, 0x4f, 0x4e, 0x33, 0x32,
];

/// The 240 fixed bytes of a BOOTP packet, then `options`.
fn raw(op: u8, xid: u32, flags: u16, options: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; OPTIONS_AT];
    b[0] = op;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[10..12].copy_from_slice(&flags.to_be_bytes());
    b[28..34].copy_from_slice(&MAC);
    b[COOKIE_AT..OPTIONS_AT].copy_from_slice(&MAGIC_COOKIE);
    b.extend_from_slice(options);
    b
}

fn set_ip(bytes: &mut [u8], at: usize, ip: [u8; 4]) {
    bytes[at..at + 4].copy_from_slice(&ip);
}

fn pad_to(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    bytes.resize(len.max(bytes.len()), 0);
    bytes
}

/// An Intel-style PXE 2.1 ROM's DHCPDISCOVER: BIOS arch, UNDI 2.1,
/// broadcast flag, secs 4, a 548-byte packet.
fn pxe_rom_discover() -> Vec<u8> {
    let mut o = vec![53, 1, 1, 57, 2, 0x04, 0xec];
    o.extend_from_slice(&[
        55, 37, 1, 2, 3, 4, 5, 6, 11, 12, 13, 15, 16, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51,
        54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
    ]);
    o.extend_from_slice(&[97, 17, 0]);
    o.extend_from_slice(&UUID);
    o.extend_from_slice(&[94, 3, 1, 2, 1, 93, 2, 0, 0, 60, 32]);
    o.extend_from_slice(b"PXEClient:Arch:00000:UNDI:002001");
    o.push(255);
    let mut b = raw(1, 0x2c41_9a07, 0x8000, &o);
    b[8..10].copy_from_slice(&4u16.to_be_bytes());
    pad_to(b, 548)
}

/// iPXE's DHCPDISCOVER on x86-64 UEFI: user class `iPXE` unframed, its
/// encapsulated options (175), a client identifier.
fn ipxe_discover() -> Vec<u8> {
    let mut o = vec![
        53, 1, 1, 57, 2, 0x05, 0xc0, 93, 2, 0, 7, 94, 3, 1, 3, 10, 60, 32,
    ];
    o.extend_from_slice(b"PXEClient:Arch:00007:UNDI:003010");
    o.extend_from_slice(&[77, 4]);
    o.extend_from_slice(b"iPXE");
    o.extend_from_slice(&[
        55, 23, 1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134,
        135, 175, 203,
    ]);
    o.extend_from_slice(&[
        175, 45, 177, 5, 1, 0x80, 0x86, 0x10, 0x0e, 235, 3, 1, 0, 0, 23, 1, 1, 34, 1, 1, 19, 1, 1,
        17, 1, 1, 39, 1, 1, 25, 1, 1, 16, 1, 2, 33, 1, 1, 21, 1, 1, 24, 1, 1, 18, 1, 1,
    ]);
    o.extend_from_slice(&[61, 7, 1]);
    o.extend_from_slice(&MAC);
    o.extend_from_slice(&[97, 17, 0]);
    o.extend_from_slice(&UUID);
    o.push(255);
    raw(1, 0x7b3c_0001, 0, &o)
}

/// ISC dhclient's DHCPREQUEST in the SELECTING state, padded to 300.
fn dhclient_request() -> Vec<u8> {
    let mut o = vec![
        53, 1, 3, 54, 4, 10, 0, 0, 1, 50, 4, 10, 0, 0, 57, 12, 5, b'n', b'o', b'd', b'e', b'7',
    ];
    o.extend_from_slice(&[
        55, 13, 1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42, 255,
    ]);
    pad_to(raw(1, 0x5f1d_2e3c, 0, &o), 300)
}

/// busybox udhcpc's DHCPDISCOVER.
fn udhcpc_discover() -> Vec<u8> {
    let mut o = vec![53, 1, 1, 61, 7, 1];
    o.extend_from_slice(&MAC);
    o.extend_from_slice(&[57, 2, 0x02, 0x40, 60, 12]);
    o.extend_from_slice(b"udhcp 1.36.1");
    o.extend_from_slice(&[12, 6]);
    o.extend_from_slice(b"router");
    o.extend_from_slice(&[55, 7, 1, 3, 6, 12, 15, 28, 42, 255]);
    raw(1, 0x0a0b_0c0d, 0, &o)
}

/// A DHCPDISCOVER relayed with option 82 (circuit id, remote id, link
/// selection, server identifier override), last as relays put it.
fn relayed_discover() -> Vec<u8> {
    let mut o = vec![53, 1, 1, 82, 28, 1, 6, 0, 4, 0, 1, 0, 7, 2, 6];
    o.extend_from_slice(&MAC);
    o.extend_from_slice(&[5, 4, 192, 168, 50, 0, 11, 4, 192, 168, 50, 1]);
    o.push(255);
    let mut b = raw(1, 0x1234_5678, 0, &o);
    b[3] = 1;
    set_ip(&mut b, 24, [10, 9, 0, 1]);
    b
}

fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("pxe rom", pxe_rom_discover()),
        ("ipxe", ipxe_discover()),
        ("dhclient", dhclient_request()),
        ("udhcpc", udhcpc_discover()),
        ("relayed", relayed_discover()),
    ]
}

fn rejects(bytes: &[u8], reason: &str) {
    match Packet::parse(bytes) {
        Ok(p) => panic!("accepted what should be {reason}: {p:?}"),
        Err(e) => {
            assert_eq!(e.reason(), reason, "{e}");
            assert!(PacketError::REASONS.contains(&e.reason()));
        }
    }
}

/// Encodes `packet` and decodes the bytes with dhcproto: the header and
/// every option that sits in the options area must read the same.
fn cross_check(packet: &Packet, bytes: &[u8]) {
    let theirs = proto::Message::decode(&mut Decoder::new(bytes)).unwrap();
    let op: u8 = theirs.opcode().into();
    assert_eq!(op, if packet.op == Op::Request { 1 } else { 2 });
    assert_eq!(theirs.hlen(), packet.hlen);
    assert_eq!(theirs.hops(), packet.hops);
    assert_eq!(theirs.xid(), packet.xid);
    assert_eq!(theirs.secs(), packet.secs);
    assert_eq!(theirs.flags().broadcast(), packet.broadcast_flag());
    assert_eq!(theirs.ciaddr(), packet.ciaddr);
    assert_eq!(theirs.yiaddr(), packet.yiaddr);
    assert_eq!(theirs.siaddr(), packet.siaddr);
    assert_eq!(theirs.giaddr(), packet.giaddr);
    assert_eq!(theirs.chaddr(), packet.hardware_addr());
    assert_eq!(theirs.fname().unwrap_or_default(), &packet.file[..]);
    assert_eq!(theirs.sname().unwrap_or_default(), &packet.sname[..]);
    let message_type: u8 = theirs.opts().msg_type().unwrap().into();
    assert_eq!(Some(message_type), packet.message_type().map(|t| t as u8));
    for (code, value) in packet.options.iter() {
        let option = theirs
            .opts()
            .get(proto::OptionCode::from(code))
            .unwrap_or_else(|| panic!("dhcproto lost option {code}"));
        // dhcproto re-encodes an option in ≤ 255-byte parts, as we do.
        let mut ours = Vec::new();
        for part in value.chunks(255) {
            ours.push(code);
            ours.push(part.len() as u8);
            ours.extend_from_slice(part);
        }
        if value.is_empty() {
            ours = vec![code, 0];
        }
        assert_eq!(option.to_vec().unwrap(), ours, "option {code}");
    }
}

#[test]
fn a_pxe_rom_discover_reads_its_arch_uuid_and_vendor_class() {
    let p = Packet::parse(&pxe_rom_discover()).unwrap();
    assert_eq!(p.op, Op::Request);
    assert_eq!(p.message_type(), Some(MessageType::Discover));
    assert_eq!(p.xid, 0x2c41_9a07);
    assert_eq!(p.secs, 4);
    assert!(p.broadcast_flag());
    assert_eq!(p.mac(), Some(MAC));
    assert_eq!(p.client_arch(), Some(0));
    assert_eq!(p.client_uuid(), Some(UUID));
    assert_eq!(
        p.vendor_class(),
        Some(&b"PXEClient:Arch:00000:UNDI:002001"[..])
    );
    assert_eq!(p.max_message_size(), Some(1260));
    assert_eq!(p.parameter_request_list().len(), 37);
    assert_eq!(p.options.get(opt::CLIENT_NDI), Some(&[1u8, 2, 1][..]));
    assert!(!p.is_ipxe());
    // No option 61: the identity is the hardware type and address.
    assert_eq!(p.client_id(), [&[1u8][..], &MAC[..]].concat());
}

#[test]
fn a_pxe_rom_discover_without_end_is_accepted() {
    let mut b = pxe_rom_discover();
    let end = b.iter().rposition(|x| *x == 255).unwrap();
    b.truncate(end);
    let p = Packet::parse(&b).unwrap();
    assert_eq!(p, Packet::parse(&pxe_rom_discover()).unwrap());
}

#[test]
fn an_ipxe_discover_is_recognised_with_its_encapsulated_options() {
    let p = Packet::parse(&ipxe_discover()).unwrap();
    assert!(p.is_ipxe());
    assert_eq!(p.user_class(), Some(&b"iPXE"[..]));
    assert_eq!(p.client_arch(), Some(7));
    assert_eq!(
        p.options.get(opt::IPXE_ENCAPSULATED).map(<[u8]>::len),
        Some(45)
    );
    assert_eq!(p.client_id(), [&[1u8][..], &MAC[..]].concat());
    assert_eq!(p.max_message_size(), Some(1472));
}

#[test]
fn a_dhclient_request_names_its_address_server_and_hostname() {
    let p = Packet::parse(&dhclient_request()).unwrap();
    assert_eq!(p.message_type(), Some(MessageType::Request));
    assert_eq!(p.requested_address(), Some(Ipv4Addr::new(10, 0, 0, 57)));
    assert_eq!(p.server_identifier(), Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(p.hostname().as_deref(), Some("node7"));
    assert_eq!(p.parameter_request_list()[..3], [1, 28, 2]);
    assert_eq!(p.max_message_size(), None);
}

#[test]
fn a_udhcpc_discover_carries_its_client_id() {
    let p = Packet::parse(&udhcpc_discover()).unwrap();
    assert_eq!(p.client_id(), [&[1u8][..], &MAC[..]].concat());
    assert_eq!(p.max_message_size(), Some(576));
    assert_eq!(p.hostname().as_deref(), Some("router"));
    assert_eq!(p.vendor_class(), Some(&b"udhcp 1.36.1"[..]));
}

#[test]
fn a_relayed_discover_reads_option_82() {
    let p = Packet::parse(&relayed_discover()).unwrap();
    assert_eq!(p.giaddr, Ipv4Addr::new(10, 9, 0, 1));
    assert_eq!(p.hops, 1);
    assert_eq!(
        p.relay_agent(),
        Some(RelayAgent {
            circuit_id: Some(vec![0, 4, 0, 1, 0, 7]),
            remote_id: Some(MAC.to_vec()),
            link_selection: Some(Ipv4Addr::new(192, 168, 50, 0)),
            server_id_override: Some(Ipv4Addr::new(192, 168, 50, 1)),
        })
    );
}

#[test]
fn every_client_shape_round_trips_and_dhcproto_reads_our_encoding_the_same() {
    for (name, bytes) in fixtures() {
        let p = Packet::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let encoded = p.encode(MAX_PACKET_BYTES).unwrap();
        assert_eq!(Packet::parse(&encoded).unwrap(), p, "{name}");
        assert_eq!(encoded[OPTIONS_AT..OPTIONS_AT + 3], [53, 1, bytes[242]]);
        cross_check(&p, &encoded);
    }
}

#[test]
fn a_reply_copies_what_table_3_says_and_echoes_option_82_and_61() {
    let mut request = Packet::parse(&relayed_discover()).unwrap();
    request.ciaddr = Ipv4Addr::new(10, 9, 0, 20);
    request.secs = 9;
    request.flags = 0x8000;
    request.options.set(opt::CLIENT_ID, vec![0xff, 1, 2, 3]);
    request.options.set(opt::HOSTNAME, b"x".to_vec());
    let offer = request.new_reply(MessageType::Offer);
    assert_eq!(offer.op, Op::Reply);
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    assert_eq!((offer.htype, offer.hlen), (1, 6));
    assert_eq!(offer.xid, request.xid);
    assert_eq!(offer.flags, 0x8000);
    assert_eq!(offer.giaddr, request.giaddr);
    assert_eq!(offer.chaddr, request.chaddr);
    assert_eq!((offer.hops, offer.secs), (0, 0));
    assert_eq!(offer.ciaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        offer.options.get(opt::RELAY_AGENT),
        request.options.get(opt::RELAY_AGENT)
    );
    assert_eq!(
        offer.options.get(opt::CLIENT_ID),
        Some(&[0xff, 1, 2, 3][..])
    );
    assert_eq!(offer.options.get(opt::HOSTNAME), None);
    assert_eq!(offer.options.len(), 3);
    // An ACK (renewing, rebinding, INFORM) keeps the client's ciaddr.
    let ack = request.new_reply(MessageType::Ack);
    assert_eq!(ack.ciaddr, request.ciaddr);
    // What a relay receives back carries the option byte for byte.
    let bytes = offer.encode(576).unwrap();
    let back = Packet::parse(&bytes).unwrap();
    assert_eq!(back.relay_agent(), request.relay_agent());
    cross_check(&offer, &bytes);
}

#[test]
fn encoding_puts_the_message_type_first_and_pads_to_the_bootp_minimum() {
    let mut p = Packet::request(MessageType::Discover, 7, MAC);
    p.options.remove(opt::MESSAGE_TYPE);
    p.options.set(opt::HOSTNAME, b"a".to_vec());
    p.options.set(opt::MESSAGE_TYPE, vec![1]);
    p.options.set(opt::OVERLOAD, vec![3]);
    let bytes = p.encode(576).unwrap();
    assert_eq!(bytes.len(), MIN_PACKET_BYTES);
    assert_eq!(
        bytes[OPTIONS_AT..OPTIONS_AT + 7],
        [53, 1, 1, 12, 1, b'a', 255]
    );
    // The stray 52 is the encoder's to decide, and it was not needed.
    assert_eq!(
        Packet::parse(&bytes).unwrap().options.get(opt::OVERLOAD),
        None
    );
}

#[test]
fn encoding_refuses_fields_longer_than_their_slot() {
    let mut p = Packet::request(MessageType::Discover, 7, MAC);
    p.sname = vec![b's'; 65];
    assert!(matches!(
        p.encode(576),
        Err(EncodeError::FieldTooLong { field: "sname", .. })
    ));
    p.sname = vec![b's'; 64];
    p.file = vec![b'f'; 129];
    assert!(matches!(
        p.encode(576),
        Err(EncodeError::FieldTooLong { field: "file", .. })
    ));
    // Full-length fields (no NUL) are fine and read back whole.
    p.file = vec![b'f'; 128];
    let back = Packet::parse(&p.encode(576).unwrap()).unwrap();
    assert_eq!((back.sname.len(), back.file.len()), (64, 128));
}

/// A reply whose options need `size` bytes of option space.
fn big_reply(option_bytes: usize) -> Packet {
    let mut p = Packet::parse(&dhclient_request())
        .unwrap()
        .new_reply(MessageType::Ack);
    // Options of 100 value bytes (102 written), codes 200.. .
    let mut code = 200u8;
    let mut left = option_bytes;
    while left > 0 {
        let value = (left.min(102).saturating_sub(2)).max(1);
        p.options.set(code, vec![code; value]);
        left = left.saturating_sub(value + 2);
        code += 1;
    }
    p
}

#[test]
fn options_that_do_not_fit_overload_file_then_sname_and_read_back() {
    // 576 leaves 335 bytes of options area; 400 needs file too, 480 sname.
    for (size, overload) in [(300, None), (400, Some(1u8)), (480, Some(3u8))] {
        let p = big_reply(size);
        let bytes = p.encode(576).unwrap();
        assert!(bytes.len() <= 576, "{size}: {} bytes", bytes.len());
        let back = Packet::parse(&bytes).unwrap();
        assert_eq!(back, p, "{size}");
        let at = OPTIONS_AT + 3;
        match overload {
            None => assert_ne!(bytes[at], opt::OVERLOAD),
            Some(value) => assert_eq!(bytes[at..at + 3], [opt::OVERLOAD, 1, value]),
        }
        // dhcproto ignores option 52: the options in file/sname are lost to it.
        let theirs = proto::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        let seen = theirs.opts().iter().count();
        if overload.is_some() {
            assert!(seen < p.options.len() + 1, "{size}: dhcproto saw {seen}");
        }
    }
}

#[test]
fn overload_uses_only_the_empty_field_and_fails_when_neither_is() {
    let mut p = big_reply(360);
    p.file = b"undionly.kpxe".to_vec();
    let bytes = p.encode(576).unwrap();
    assert_eq!(bytes[OPTIONS_AT + 3..OPTIONS_AT + 6], [opt::OVERLOAD, 1, 2]);
    let back = Packet::parse(&bytes).unwrap();
    assert_eq!(back.file, b"undionly.kpxe");
    assert_eq!(back, p);
    p.sname = b"node1".to_vec();
    assert_eq!(p.encode(576), Err(EncodeError::TooLarge { max_len: 576 }));
    // A larger limit makes room without overload.
    assert_eq!(Packet::parse(&p.encode(1500).unwrap()).unwrap(), p);
}

#[test]
fn overloaded_fields_are_read_in_the_order_options_file_sname() {
    // Option 43's parts: "ab" in options, "cd" in file, "ef" in sname.
    let mut b = raw(1, 1, 0, &[53, 1, 1, 52, 1, 3, 43, 2, b'a', b'b', 255]);
    b[SNAME_AT..SNAME_AT + 6].copy_from_slice(&[43, 2, b'e', b'f', 255, 0]);
    b[FILE_AT..FILE_AT + 9].copy_from_slice(&[0, 43, 2, b'c', b'd', 12, 1, b'h', 255]);
    let p = Packet::parse(&b).unwrap();
    assert_eq!(p.options.get(43), Some(&b"abcdef"[..]));
    assert_eq!(p.hostname().as_deref(), Some("h"));
    assert!(p.file.is_empty() && p.sname.is_empty());
    assert_eq!(p.options.get(opt::OVERLOAD), None);
    // Only file overloaded: sname stays a name, even if it looks like options.
    b[OPTIONS_AT + 5] = 1;
    let p = Packet::parse(&b).unwrap();
    assert_eq!(p.options.get(43), Some(&b"abcd"[..]));
    assert_eq!(p.sname, [43, 2, b'e', b'f', 255]);
    // Without overload, file and sname are plain text up to the first NUL.
    let mut b = raw(1, 1, 0, &[53, 1, 1, 255]);
    b[FILE_AT..FILE_AT + 5].copy_from_slice(b"boot\0");
    b[FILE_AT + 6] = b'x';
    let p = Packet::parse(&b).unwrap();
    assert_eq!(p.file, b"boot");
}

#[test]
fn long_options_are_concatenated_on_input_and_split_on_output() {
    // RFC 3396: a 300-byte option in two parts, not adjacent.
    let mut o = vec![43, 255];
    o.extend(std::iter::repeat_n(7u8, 255));
    o.extend_from_slice(&[53, 1, 1, 43, 45]);
    o.extend(std::iter::repeat_n(8u8, 45));
    o.push(255);
    let p = Packet::parse(&raw(1, 1, 0, &o)).unwrap();
    let value = p.options.get(43).unwrap();
    assert_eq!(value.len(), 300);
    assert_eq!((value[254], value[255]), (7, 8));

    let mut reply = p.new_reply(MessageType::Ack);
    let long: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
    reply.options.set(opt::VENDOR_SPECIFIC, long.clone());
    let bytes = reply.encode(1500).unwrap();
    let at = OPTIONS_AT + 3;
    assert_eq!(bytes[at..at + 2], [43, 255]);
    assert_eq!(bytes[at + 257..at + 259], [43, 255]);
    assert_eq!(bytes[at + 514..at + 516], [43, 90]);
    assert_eq!(
        Packet::parse(&bytes).unwrap().options.get(43),
        Some(&long[..])
    );
    // dhcproto joins adjacent parts too.
    cross_check(&reply, &bytes);
    // And a long option still fits a 576-byte reply through overload.
    let mut small = p.new_reply(MessageType::Ack);
    small
        .options
        .set(opt::VENDOR_SPECIFIC, long[..400].to_vec());
    let bytes = small.encode(576).unwrap();
    assert!(bytes.len() <= 576);
    assert_eq!(Packet::parse(&bytes).unwrap(), small);
}

#[test]
fn malformed_packets_are_refused_with_their_reason() {
    let good = udhcpc_discover();
    rejects(&[], "truncated");
    rejects(&good[..239], "truncated");
    rejects(&pad_to(good.clone(), MAX_PACKET_BYTES + 1), "oversized");
    assert!(Packet::parse(&pad_to(good.clone(), MAX_PACKET_BYTES)).is_ok());
    let with = |at: usize, value: u8| {
        let mut b = good.clone();
        b[at] = value;
        b
    };
    rejects(&with(0, 0), "bad_op");
    rejects(&with(0, 3), "bad_op");
    rejects(&with(2, 17), "bad_hardware_address");
    rejects(&with(2, 7), "bad_hardware_address");
    rejects(&with(COOKIE_AT, 98), "bad_magic");
    // Other hardware types may have other lengths, up to 16.
    let mut infiniband = with(1, 32);
    infiniband[2] = 16;
    assert!(Packet::parse(&infiniband).is_ok());
    // A BOOTREPLY parses: dropping one sent to a server is the handler's call.
    assert_eq!(Packet::parse(&with(0, 2)).unwrap().op, Op::Reply);

    let options = |o: &[u8]| raw(1, 1, 0, o);
    rejects(&options(&[53, 1, 1, 12, 5, b'a']), "option_overrun");
    rejects(&options(&[53, 1, 1, 12]), "option_overrun");
    rejects(&options(&[53, 3, 1]), "option_overrun");
    rejects(&options(&[12, 1, b'a', 255]), "missing_message_type");
    rejects(&options(&[]), "missing_message_type");
    // Message type after END does not count.
    rejects(&options(&[255, 53, 1, 1]), "missing_message_type");
    rejects(&options(&[53, 2, 1, 1, 255]), "bad_message_type");
    rejects(&options(&[53, 0, 255]), "bad_message_type");
    rejects(&options(&[53, 1, 0, 255]), "bad_message_type");
    rejects(&options(&[53, 1, 9, 255]), "bad_message_type");
    // Two message types concatenate (RFC 3396) into a 2-byte one.
    rejects(&options(&[53, 1, 1, 53, 1, 3, 255]), "bad_message_type");
    for bad in [
        &[50, 3, 10, 0, 0][..],
        &[54, 5, 10, 0, 0, 1, 1],
        &[57, 1, 2],
        &[93, 3, 0, 0, 7],
        &[93, 0],
        &[97, 16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        &[118, 3, 10, 0, 0],
        &[61, 1, 1],
        &[61, 0],
    ] {
        let mut o = vec![53, 1, 1];
        o.extend_from_slice(bad);
        rejects(&options(&o), "bad_option_length");
    }
    let mut o = vec![53, 1, 1, 97, 17, 1];
    o.extend_from_slice(&UUID);
    rejects(&options(&o), "bad_option_value");

    for bad in [
        &[82, 4, 1, 5, 0, 0][..],
        &[82, 2, 2, 1],
        &[82, 1, 1],
        &[82, 5, 5, 3, 10, 0, 0],
        &[82, 6, 1, 1, 9, 1, 1, 8],
        &[82, 12, 11, 4, 1, 1, 1, 1, 11, 4, 1, 1, 1, 2],
    ] {
        let mut o = vec![53, 1, 1];
        o.extend_from_slice(bad);
        rejects(&options(&o), "bad_relay_agent");
    }

    // Overload: bad values, option 52 inside a field, overruns in fields.
    rejects(&options(&[53, 1, 1, 52, 1, 4, 255]), "bad_overload");
    rejects(&options(&[53, 1, 1, 52, 1, 0, 255]), "bad_overload");
    rejects(&options(&[53, 1, 1, 52, 2, 1, 1, 255]), "bad_overload");
    rejects(
        &options(&[53, 1, 1, 52, 1, 1, 52, 1, 1, 255]),
        "bad_overload",
    );
    let mut b = options(&[53, 1, 1, 52, 1, 3, 255]);
    b[FILE_AT..FILE_AT + 4].copy_from_slice(&[52, 1, 3, 255]);
    rejects(&b, "overload_loop");
    let mut b = options(&[53, 1, 1, 52, 1, 2, 255]);
    b[SNAME_AT..SNAME_AT + 4].copy_from_slice(&[52, 1, 2, 255]);
    rejects(&b, "overload_loop");
    let mut b = options(&[53, 1, 1, 52, 1, 1, 255]);
    b[FILE_AT + 126..FILE_AT + 128].copy_from_slice(&[12, 3]);
    rejects(&b, "option_overrun");
    // The message type may sit in an overloaded field; the check sees it.
    let mut b = options(&[52, 1, 2, 255]);
    b[SNAME_AT..SNAME_AT + 4].copy_from_slice(&[53, 1, 8, 255]);
    assert_eq!(
        Packet::parse(&b).unwrap().message_type(),
        Some(MessageType::Inform)
    );
}

#[test]
fn every_reason_is_listed_and_distinct() {
    let mut seen = PacketError::REASONS.to_vec();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), PacketError::REASONS.len());
    assert!(seen
        .iter()
        .all(|r| r.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
}

#[test]
fn accessors_read_what_clients_actually_send() {
    let mut p = Packet::request(MessageType::Request, 1, MAC);
    assert_eq!(p.hostname(), None);
    p.options.set(opt::HOSTNAME, b"pc\0\0".to_vec());
    assert_eq!(p.hostname().as_deref(), Some("pc"));
    p.options.set(opt::HOSTNAME, vec![b'h'; 80]);
    assert_eq!(p.hostname().map(|h| h.len()), Some(63));
    p.options.set(opt::HOSTNAME, vec![0xff, b'a']);
    assert_eq!(p.hostname().as_deref(), Some("\u{fffd}a"));
    p.options
        .set(opt::MAX_MESSAGE_SIZE, 575u16.to_be_bytes().to_vec());
    assert_eq!(p.max_message_size(), None);
    // RFC 3004 framing, iPXE among other classes.
    p.options.set(opt::USER_CLASS, b"\x03abc\x04iPXE".to_vec());
    assert!(p.is_ipxe());
    p.options.set(opt::USER_CLASS, b"\x05iPXE".to_vec());
    assert!(!p.is_ipxe());
    p.options.set(opt::USER_CLASS, b"iPXE2".to_vec());
    assert!(!p.is_ipxe());
    p.options.set(opt::CLIENT_ARCH, vec![0, 16, 0, 7]);
    assert_eq!(p.client_arch(), Some(16));
    p.options.set(opt::SUBNET_SELECTION, vec![10, 1, 2, 0]);
    assert_eq!(p.subnet_selection(), Some(Ipv4Addr::new(10, 1, 2, 0)));
    assert_eq!(p.relay_agent(), None);
    assert_eq!(p.hardware_addr(), MAC);
    p.htype = 6;
    assert_eq!(p.mac(), None);
    assert_eq!(p.client_id(), [&[6u8][..], &MAC[..]].concat());
    p.hlen = 200;
    assert_eq!(p.hardware_addr().len(), 16);
}

#[test]
fn our_option_codes_agree_with_dhcproto() {
    use proto::OptionCode as C;
    for (ours, theirs) in [
        (opt::SUBNET_MASK, C::SubnetMask),
        (opt::ROUTER, C::Router),
        (opt::DOMAIN_NAME_SERVER, C::DomainNameServer),
        (opt::HOSTNAME, C::Hostname),
        (opt::DOMAIN_NAME, C::DomainName),
        (opt::BROADCAST_ADDRESS, C::BroadcastAddr),
        (opt::VENDOR_SPECIFIC, C::VendorExtensions),
        (opt::REQUESTED_ADDRESS, C::RequestedIpAddress),
        (opt::LEASE_TIME, C::AddressLeaseTime),
        (opt::OVERLOAD, C::OptionOverload),
        (opt::MESSAGE_TYPE, C::MessageType),
        (opt::SERVER_IDENTIFIER, C::ServerIdentifier),
        (opt::PARAMETER_REQUEST_LIST, C::ParameterRequestList),
        (opt::MAX_MESSAGE_SIZE, C::MaxMessageSize),
        (opt::RENEWAL_TIME, C::Renewal),
        (opt::REBINDING_TIME, C::Rebinding),
        (opt::VENDOR_CLASS, C::ClassIdentifier),
        (opt::CLIENT_ID, C::ClientIdentifier),
        (opt::RELAY_AGENT, C::RelayAgentInformation),
        (opt::CLIENT_ARCH, C::ClientSystemArchitecture),
        (opt::CLIENT_NDI, C::ClientNetworkInterface),
        (opt::CLIENT_UUID, C::ClientMachineIdentifier),
        (opt::SUBNET_SELECTION, C::SubnetSelection),
        (opt::DOMAIN_SEARCH, C::DomainSearch),
        (opt::CLASSLESS_STATIC_ROUTE, C::ClasslessStaticRoute),
    ] {
        assert_eq!(ours, u8::from(theirs), "{theirs:?}");
    }
}

/// The round-trip property: what parses re-encodes and re-parses to the
/// same packet. Re-encoding needs at most a few bytes more than the input
/// (an END the input may have left out, a part split at a field's edge),
/// so only an input at the size limit may fail to re-encode.
fn check_round_trip(input: &[u8]) {
    let Ok(packet) = Packet::parse(input) else {
        return;
    };
    match packet.encode(MAX_PACKET_BYTES) {
        Ok(bytes) => {
            assert!(bytes.len() <= MAX_PACKET_BYTES && bytes.len() >= MIN_PACKET_BYTES);
            assert_eq!(Packet::parse(&bytes).as_ref(), Ok(&packet));
        }
        Err(EncodeError::TooLarge { .. }) => assert!(input.len() > MAX_PACKET_BYTES - 16),
        Err(e) => panic!("{e}"),
    }
}

/// Option bytes likely to exercise the walk: real codes, overload, pads,
/// END, and lengths near the edges.
fn option_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        any::<u8>(),
        Just(0u8),
        Just(255u8),
        Just(52u8),
        Just(53u8),
        Just(82u8),
        1u8..=8,
    ];
    proptest::collection::vec(byte, 0..600)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        check_round_trip(&bytes);
    }

    #[test]
    fn arbitrary_options_after_a_valid_header_round_trip(
        options in option_bytes(),
        file in option_bytes(),
        sname in option_bytes(),
        message_type in 1u8..=8,
        overload in 0u8..=3,
    ) {
        let mut o = vec![53, 1, message_type];
        if overload != 0 {
            o.extend_from_slice(&[52, 1, overload]);
        }
        o.extend_from_slice(&options);
        let mut b = raw(1, 9, 0, &o);
        let n = file.len().min(FILE_BYTES);
        b[FILE_AT..FILE_AT + n].copy_from_slice(&file[..n]);
        let n = sname.len().min(SNAME_BYTES);
        b[SNAME_AT..SNAME_AT + n].copy_from_slice(&sname[..n]);
        check_round_trip(&b);
    }

    #[test]
    fn mutated_client_packets_never_panic_and_round_trip(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
        extra in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut shapes: Vec<Vec<u8>> = fixtures().into_iter().map(|(_, b)| b).collect();
        shapes.extend(CAPTURES.iter().map(|(_, b)| b.to_vec()));
        let mut b = shapes.swap_remove(which.index(shapes.len()));
        for (at, value) in edits {
            let at = at.index(b.len());
            b[at] = value;
        }
        if do_cut {
            b.truncate(cut.index(b.len() + 1));
        }
        b.extend_from_slice(&extra);
        check_round_trip(&b);
    }

    #[test]
    fn built_packets_encode_and_parse_back(
        options in proptest::collection::vec(
            (prop_oneof![1u8..50, 62u8..82, 83u8..93, 98u8..118, 119u8..255],
             proptest::collection::vec(any::<u8>(), 0..400)),
            0..10),
        sname in proptest::collection::vec(1u8..=255, 0..=64),
        file in proptest::collection::vec(1u8..=255, 0..=128),
        max_len in 0usize..2000,
        xid in any::<u32>(),
        flags in any::<u16>(),
    ) {
        let mut p = Packet::request(MessageType::Discover, xid, MAC).new_reply(MessageType::Offer);
        p.flags = flags;
        p.sname = sname;
        p.file = file;
        for (code, value) in options {
            p.options.set(code, value);
        }
        let limit = max_len.clamp(MIN_REPLY_BYTES, MAX_PACKET_BYTES);
        match p.encode(max_len) {
            Ok(bytes) => {
                prop_assert!(bytes.len() <= limit && bytes.len() >= MIN_PACKET_BYTES);
                prop_assert_eq!(Packet::parse(&bytes), Ok(p));
            }
            Err(EncodeError::TooLarge { .. }) => {
                // Refused only when the options fill what room there was:
                // the options area, and the fields left empty, less a few
                // bytes lost at each area's edge.
                let need: usize = p
                    .options
                    .iter()
                    .map(|(_, v)| v.len() + 2 * v.len().div_ceil(255).max(1))
                    .sum();
                prop_assert!(need > limit - OPTIONS_AT - 1);
                let fields = if p.file.is_empty() { FILE_BYTES } else { 0 }
                    + if p.sname.is_empty() { SNAME_BYTES } else { 0 };
                prop_assert!(need + 16 > limit - OPTIONS_AT + fields);
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}

/// Real clients' packets, captured by `chaos/capture-dhcp.sh` (see
/// `tests/data/dhcp/README.md` for how each was made).
const CAPTURES: &[(&str, &[u8])] = &[
    (
        "dhclient-discover.bin",
        include_bytes!("../../../tests/data/dhcp/dhclient-discover.bin"),
    ),
    (
        "dhclient-request.bin",
        include_bytes!("../../../tests/data/dhcp/dhclient-request.bin"),
    ),
    (
        "udhcpc-discover.bin",
        include_bytes!("../../../tests/data/dhcp/udhcpc-discover.bin"),
    ),
    (
        "udhcpc-request.bin",
        include_bytes!("../../../tests/data/dhcp/udhcpc-request.bin"),
    ),
    (
        "ipxe-bios-discover.bin",
        include_bytes!("../../../tests/data/dhcp/ipxe-bios-discover.bin"),
    ),
    (
        "ipxe-bios-request.bin",
        include_bytes!("../../../tests/data/dhcp/ipxe-bios-request.bin"),
    ),
    (
        "ovmf-discover.bin",
        include_bytes!("../../../tests/data/dhcp/ovmf-discover.bin"),
    ),
    (
        "ovmf-request.bin",
        include_bytes!("../../../tests/data/dhcp/ovmf-request.bin"),
    ),
];

fn capture(name: &str) -> Packet {
    let (_, bytes) = CAPTURES.iter().find(|(n, _)| *n == name).unwrap();
    Packet::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_capture_is_listed_parses_round_trips_and_reads_as_dhcproto_reads_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dhcp");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CAPTURES.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk,
        listed,
        "a capture in {} is not tested",
        dir.display()
    );

    for (name, bytes) in CAPTURES {
        let p = Packet::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.op, Op::Request, "{name}");
        assert_eq!(p.mac().map(|m| m[..3].to_vec()), Some(vec![0x52, 0x54, 0]));
        let encoded = p.encode(MAX_PACKET_BYTES).unwrap();
        assert_eq!(Packet::parse(&encoded).unwrap(), p, "{name}");
        cross_check(&p, &encoded);
        // dhcproto reads the original bytes to the same options (none of
        // these clients overloads or splits an option).
        let theirs = proto::Message::decode(&mut Decoder::new(bytes)).unwrap();
        assert_eq!(theirs.opts().iter().count(), p.options.len(), "{name}");
        assert_eq!(theirs.xid(), p.xid);
    }
}

#[test]
fn captured_dhclient_and_udhcpc_identify_as_rfc_2131_says() {
    let discover = capture("dhclient-discover.bin");
    assert_eq!(discover.message_type(), Some(MessageType::Discover));
    assert_eq!(discover.hostname().as_deref(), Some("cradle-lab"));
    assert_eq!(discover.options.get(opt::CLIENT_ID), None);
    let mut id = vec![1];
    id.extend_from_slice(discover.hardware_addr());
    assert_eq!(discover.client_id(), id);
    let request = capture("dhclient-request.bin");
    assert_eq!(request.message_type(), Some(MessageType::Request));
    assert_eq!(
        request.server_identifier(),
        Some(Ipv4Addr::new(198, 18, 8, 1))
    );
    assert_eq!(
        request.requested_address(),
        Some(Ipv4Addr::new(198, 18, 8, 100))
    );
    assert_eq!(request.xid, discover.xid);

    let udhcpc = capture("udhcpc-request.bin");
    assert_eq!(udhcpc.max_message_size(), Some(576));
    assert_eq!(udhcpc.vendor_class(), Some(&b"udhcp 1.35.0"[..]));
    assert_eq!(
        udhcpc.client_id(),
        [&[1u8][..], udhcpc.hardware_addr()].concat()
    );
    assert_eq!(
        udhcpc.requested_address(),
        Some(Ipv4Addr::new(198, 18, 8, 101))
    );
}

#[test]
fn captured_ipxe_as_bios_rom_reads_as_ipxe_on_bios() {
    let p = capture("ipxe-bios-discover.bin");
    assert!(p.is_ipxe());
    assert_eq!(p.client_arch(), Some(0));
    assert_eq!(p.secs, 4);
    assert_eq!(p.max_message_size(), Some(1472));
    assert_eq!(
        p.vendor_class(),
        Some(&b"PXEClient:Arch:00000:UNDI:002001"[..])
    );
    assert_eq!(
        p.options.get(opt::IPXE_ENCAPSULATED).map(<[u8]>::len),
        Some(48)
    );
    // QEMU ran with -uuid 8c9d0e1f-2a3b-4c5d-8e6f-7a8b9c0d1e2f.
    assert_eq!(
        p.client_uuid_smbios().map(|u| u.to_string()).as_deref(),
        Some("8c9d0e1f-2a3b-4c5d-8e6f-7a8b9c0d1e2f")
    );
    assert_eq!(capture("ipxe-bios-request.bin").secs, 18);
}

#[test]
fn captured_ovmf_reads_as_uefi_x64_and_its_huge_max_size_is_kept_as_sent() {
    let p = capture("ovmf-discover.bin");
    assert!(p.broadcast_flag());
    assert!(!p.is_ipxe());
    assert_eq!(p.client_arch(), Some(7));
    assert_eq!(
        p.client_uuid_smbios().map(|u| u.to_string()).as_deref(),
        Some("1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b")
    );
    let request = capture("ovmf-request.bin");
    assert_eq!(request.max_message_size(), Some(65280));
    // The reply's size is capped whatever the client says.
    assert_eq!(request.max_reply_bytes(), MAX_PACKET_BYTES);
    let mut ack = request.new_reply(MessageType::Ack);
    ack.options.set(opt::VENDOR_SPECIFIC, vec![1; 1400]);
    assert!(ack.encode(65280).unwrap().len() <= MAX_PACKET_BYTES);
    // Option 57 counts the IP datagram: udhcpc's 576 leaves 548 of payload.
    assert_eq!(capture("udhcpc-request.bin").max_reply_bytes(), 548);
    assert_eq!(capture("dhclient-request.bin").max_reply_bytes(), 548);
    assert_eq!(capture("ipxe-bios-request.bin").max_reply_bytes(), 1444);
    let mut big = capture("udhcpc-request.bin").new_reply(MessageType::Ack);
    big.options.set(opt::VENDOR_SPECIFIC, vec![1; 400]);
    let bytes = big.encode(0).unwrap();
    assert!(bytes.len() <= MIN_REPLY_BYTES);
    assert_eq!(Packet::parse(&bytes).unwrap(), big);
}
