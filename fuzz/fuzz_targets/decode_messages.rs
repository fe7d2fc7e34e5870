//! Arbitrary control payloads, straight to the typed JSON message parsers (no header to get
//! right, so the fuzzer spends its time inside the JSON documents).
//!
//! Input layout: `[kind, stream, payload...]`: `kind % 18` picks the frame kind, `stream` the
//! stream id; the rest is the payload. Every typed parser is tried; only the one for the kind may
//! succeed, and what it returns must round-trip and be usable (exit status, version check).
#![no_main]

use cella_fuzz::{check_frame, ALL_KINDS};
use cella_protocol::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (kind, stream, payload) = match data {
        [k, s, payload @ ..] => (ALL_KINDS[*k as usize % ALL_KINDS.len()], *s as u64, payload),
        _ => return,
    };
    check_frame(&Frame::new(kind, stream, payload.to_vec()));
});
