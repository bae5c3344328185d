//! DHCPv4 on every node: PXE-aware answers, leases committed through Raft
//! before the ACK, and one answering node per client; the packet codec
//! (parsing what clients and relays send, encoding the answers), and the
//! sockets and interfaces it serves on.

pub mod flood;
pub mod interfaces;
pub mod option;
pub mod owner;
pub mod packet;
pub mod pxe;
pub mod server;
pub mod socket;
pub mod start;
pub mod templates;
pub mod values;
