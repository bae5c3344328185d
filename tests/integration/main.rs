//! Integration tests: nodes on loopback, driven through the HTTPS API and the
//! CLI. One test binary, so the crate is linked once.

mod common;

mod api;
mod bad_input;
mod cli;
mod events;
mod restart;
