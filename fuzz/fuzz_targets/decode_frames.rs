//! Arbitrary bytes from the guest through `FrameCodec`, fed in pieces, then every decoded frame
//! through every typed message parser.
//!
//! Input layout: `[a, b, wire...]`. The wire bytes are fed to the decoder in pieces whose sizes
//! cycle through `a, b` (0 means "everything left"), so one input explores both the byte-by-byte
//! and the all-at-once paths. Checked: no panic, decode buffer bounded by two maximal frames plus
//! the piece just fed, decoding independent of how the stream was cut, decoded frames re-encode
//! to exactly the bytes they came from, typed messages round-trip.
#![no_main]

use cella_fuzz::{check_frame, drain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (chunks, wire) = match data {
        [a, b, wire @ ..] => ([*a as usize, *b as usize], wire),
        _ => return,
    };
    let chunked = drain(wire, &chunks);
    let whole = drain(wire, &[0]);
    assert_eq!(chunked, whole, "decoding depends on how the stream was cut");

    let mut reencoded = Vec::with_capacity(wire.len());
    for frame in &chunked.frames {
        check_frame(frame);
        reencoded.extend_from_slice(&frame.to_bytes().expect("decoded frame must re-encode"));
    }
    assert_eq!(
        &wire[..reencoded.len()],
        &reencoded[..],
        "frames did not re-encode to the bytes they were decoded from"
    );
    if !chunked.failed {
        assert_eq!(&wire[reencoded.len()..], &chunked.leftover[..]);
    }
});
