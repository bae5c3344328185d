//! DHCPv4 on every node: PXE-aware answers, leases committed through Raft
//! before the ACK, and one answering node per client; the sockets and
//! interfaces it serves on.

pub mod interfaces;
pub mod owner;
pub mod pxe;
pub mod socket;
pub mod templates;
pub mod values;
