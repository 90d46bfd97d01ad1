//! Arbitrary bytes, split at arbitrary points into syscalls of both directions, with arbitrary
//! capture limits and lost events, fed to HTTP/2 parsers of both sides (after the client
//! preface, or as a connection found mid-stream): no panic, streams and header tables bounded,
//! and every exchange names what a request could carry.
#![no_main]

include!("agent.rs");

/// The client preface and an empty SETTINGS, where the side puts them.
fn preface(side: Side, parser: &mut dyn Parser, out: &mut Vec<Exchange>) {
    let mut bytes = protocol::http2::PREFACE.to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let _ = parser.feed(side.request_direction(), 0, &bytes, bytes.len() as u64, out);
}

fuzz_target!(|data: &[u8]| {
    drive(Protocol::Http2, data, preface, |x| match &x.attributes {
        protocol::Attributes::Http1(a) => {
            assert!(a.path.len() <= protocol::http1::MAX_PATH_BYTES);
            assert_eq!(a.version, protocol::http1::Version::Http2);
        }
        protocol::Attributes::Http2(a) => {
            assert!(a.service.len() + a.method.len() <= protocol::http1::MAX_PATH_BYTES);
        }
        _ => panic!("an HTTP/2 parser made another protocol's exchange"),
    });
});

use libfuzzer_sys::fuzz_target;
