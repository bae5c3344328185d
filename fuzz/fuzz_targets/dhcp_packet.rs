//! Fuzzes the DHCP packet parser: no input may panic it, and whatever it
//! accepts must encode and parse back to the same packet, as must a reply
//! built from it.
#![no_main]

use cradle::dhcp::packet::{EncodeError, MessageType, Packet, MAX_PACKET_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::parse(data) else {
        return;
    };
    match packet.encode(MAX_PACKET_BYTES) {
        Ok(bytes) => assert_eq!(Packet::parse(&bytes).as_ref(), Ok(&packet)),
        // Re-encoding may need a few bytes more than the input had (an END
        // the input left out, a part split at a field's edge).
        Err(EncodeError::TooLarge { .. }) => assert!(data.len() > MAX_PACKET_BYTES - 16),
        Err(e) => panic!("{e}"),
    }
    let reply = packet.new_reply(MessageType::Offer);
    if let Ok(bytes) = reply.encode(576) {
        assert_eq!(Packet::parse(&bytes).as_ref(), Ok(&reply));
    }
});
