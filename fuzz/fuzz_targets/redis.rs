//! Arbitrary bytes, split at arbitrary points into syscalls of both directions, with arbitrary
//! capture limits, fed to Redis parsers (RESP2, RESP3, inline commands) of both sides: no panic, buffers bounded.
#![no_main]

include!("agent.rs");

fuzz_target!(|data: &[u8]| {
    drive(Protocol::Redis, data, no_preamble, |x| {
        let protocol::Attributes::Redis(a) = &x.attributes else {
            panic!("a Redis parser made another protocol's exchange");
        };
        bounded_query(a);
    });
});

use libfuzzer_sys::fuzz_target;
