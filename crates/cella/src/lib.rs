//! The cella SDK.
