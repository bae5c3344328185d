//! DHCPv4 server: the packet codec (parsing what clients and relays send,
//! encoding the answers) and, around it, the protocol handler that turns a
//! request into a lease committed through Raft before it is acknowledged.

pub mod option;
pub mod packet;
