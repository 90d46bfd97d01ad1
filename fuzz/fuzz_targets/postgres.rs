//! Arbitrary bytes, split at arbitrary points into syscalls of both directions, with arbitrary
//! capture limits, fed to PostgreSQL parsers of both sides: no panic, bounded query texts.
#![no_main]

include!("agent.rs");

fuzz_target!(|data: &[u8]| {
    drive(Protocol::Postgresql, data, no_preamble, |x| {
        let protocol::Attributes::Postgresql(a) = &x.attributes else {
            panic!("a PostgreSQL parser made a non-PostgreSQL exchange");
        };
        bounded_query(a);
    });
});

use libfuzzer_sys::fuzz_target;
