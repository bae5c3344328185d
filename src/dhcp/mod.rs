//! DHCPv4 on every node: PXE-aware answers, leases committed through Raft
//! before the ACK, and one answering node per client.

pub mod owner;
pub mod pxe;
pub mod templates;
pub mod values;
