//! One module per subcommand, plus the pieces they share.

pub mod attach;
pub mod create;
pub mod exec;
pub mod inspect;
pub mod logs;
pub mod ls;
pub mod opts;
pub mod rm;
pub mod run;
pub mod sandbox;
pub mod start;
pub mod stop;
