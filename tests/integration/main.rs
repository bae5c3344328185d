//! Integration tests: nodes on loopback, driven through the HTTPS API and the
//! CLI. One test binary, so the crate is linked once.

mod cluster_harness;
mod common;

mod api;
mod architecture;
mod bad_input;
mod cli;
mod cluster;
mod connections;
mod dhcp;
mod events;
mod failover;
mod join_tokens;
mod leases;
mod restart;
mod security;
mod service;
