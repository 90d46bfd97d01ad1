//! Arbitrary bytes, split at arbitrary points into syscalls of both directions, with arbitrary
//! capture limits, fed to HTTP/1 parsers of both sides: no panic, buffers bounded.
#![no_main]

include!("agent.rs");

fuzz_target!(|data: &[u8]| {
    drive(Protocol::Http1, data, no_preamble, |x| {
        let protocol::Attributes::Http1(a) = &x.attributes else {
            panic!("an HTTP/1 parser made a non-HTTP exchange");
        };
        assert!(a.path.len() <= protocol::http1::MAX_PATH_BYTES);
        let _ = protocol::http1::route::route(&a.path);
    });
});

use libfuzzer_sys::fuzz_target;
