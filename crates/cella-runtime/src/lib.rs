//! The cella sandbox process and everything it owns.
//!
//! One `cella sandbox` process runs per running sandbox ([`sandbox`]). It owns the VM through a
//! backend ([`backend`]), relays client sessions to the guest agent over one console port
//! ([`relay`]), and records the sandbox's life in the state database; [`lifecycle`] cleans up
//! after sandbox processes that died. Launchers (CLI, SDK) start it through [`launch`].

pub mod assets;
pub mod backend;
pub mod config;
pub mod home;
pub mod launch;
pub mod lifecycle;
pub mod ratelimit;
pub mod relay;
pub mod sandbox;
