//! Arbitrary bytes, split at arbitrary points into syscalls of both directions, with arbitrary
//! capture limits, fed to Memcached parsers (text protocol; binary detected) of both sides: no panic, buffers bounded.
#![no_main]

include!("agent.rs");

fuzz_target!(|data: &[u8]| {
    drive(Protocol::Memcached, data, no_preamble, |x| {
        let protocol::Attributes::Memcached(a) = &x.attributes else {
            panic!("a Memcached parser made another protocol's exchange");
        };
        bounded_query(&a.db);
    });
});

use libfuzzer_sys::fuzz_target;
