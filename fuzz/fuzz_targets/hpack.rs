//! Arbitrary header blocks through one HPACK decoder (a table seen from its start, or one found
//! mid-stream), block after block so that the dynamic table carries state between them: no
//! panic, no decoded string longer than the limit, and a table that never holds more than its
//! hard cap.
#![no_main]

include!("agent.rs");

use protocol::http2::hpack::{Decoder, MAX_STRING, Text};

fuzz_target!(|data: &[u8]| {
    let Some((&control, blocks)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(control & 1 == 0);
    if control & 2 != 0 {
        decoder.set_settings_limit(u32::from(control) * 1024);
    }
    // Blocks separated by 0xfe bytes.
    for block in blocks.split(|&b| b == 0xfe) {
        let _ = decoder.decode(block, |name, value| {
            for t in [name, value] {
                if let Text::Known(b) = t {
                    assert!(b.len() <= MAX_STRING);
                }
            }
        });
        assert!(decoder.table_bytes() <= protocol::http2::hpack::HARD_CAP);
    }
});

use libfuzzer_sys::fuzz_target;
