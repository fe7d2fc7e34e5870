//! The cella sandbox process and everything it owns.
//!
//! One `cella sandbox` process runs per running sandbox. It owns the VM through a
//! [`backend::VmBackend`], relays client sessions to the guest agent over one console port,
//! records the sandbox's life in the state database and cleans up after itself and after
//! sandbox processes that died (see [`lifecycle`]).

pub mod lifecycle;
