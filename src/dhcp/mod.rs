//! DHCPv4 and proxyDHCP: the sockets and interfaces they serve on, the
//! packet codec, and the handler that answers from replicated leases.

pub mod interfaces;
pub mod socket;
