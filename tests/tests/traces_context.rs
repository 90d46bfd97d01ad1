//! Traces, the context a request carries: 64-bit trace ids are written with 16 digits and
//! found under both spellings; malformed trace headers are counted and ignored (a new trace).
//!
//! How the numbers are kept exact on a node where everything is observed: see
//! [`meshtap_tests::traces`].

use std::collections::BTreeSet;

use meshtap_tests::serial;
use meshtap_tests::spans::{by_trace, describe, flag, id, one, parent, sorted, trace_id};
use meshtap_tests::traces::{Service, agent_args, header, requests, run_client, start_agent};
use meshtap_tests::zipkin::{Collector, EXPORT, api, validate};

const CONTEXT_INVALID: &str = "meshtap_trace_context_invalid_total";

// ---------------------------------------------------------------------------------------------
// 64-bit trace ids

/// 64-bit trace ids (B3 with 16 hex digits, a traceparent whose high half is zero) are written
/// as 16 hex digits, and the store finds the trace under both spellings.
#[test]
fn sixty_four_bit_trace_ids_are_written_with_16_digits() {
    let _serial = serial();
    let collector = Collector::start("tr8-coll", &[]);
    let agent = start_agent(&agent_args(&collector.endpoint(), &[]));
    let server = Service::start("tr8-svc", "tr8-service", None, "none");
    let b3 = run_client(
        "tr8-cli",
        "tr8-client",
        server.port,
        3,
        &[("--propagate", "b3-64")],
    );
    let w3c = run_client(
        "tr8-cli",
        "tr8-client",
        server.port,
        3,
        &[("--propagate", "w3c-64")],
    );
    server.finish();
    let spans = collector.wait_spans(&["tr8-client", "tr8-service"], 12);
    let mut expected: BTreeSet<String> = requests(&b3)
        .iter()
        .map(|r| header(r, "X-B3-TraceId").to_owned())
        .collect();
    expected.extend(requests(&w3c).iter().map(|r| {
        header(r, "traceparent")
            .split('-')
            .nth(1)
            .expect("trace id")[16..]
            .to_owned()
    }));
    let got: BTreeSet<String> = spans.iter().map(|s| trace_id(s).to_owned()).collect();
    assert_eq!(got, expected, "{}", describe(&spans));
    for (short, spans) in by_trace(&spans) {
        assert_eq!(spans.len(), 2);
        for id in [short.clone(), format!("{}{short}", "0".repeat(16))] {
            let trace = api(&agent, &format!("/api/v2/trace/{id}"));
            validate(&trace, "Trace", "/api/v2/trace");
            assert_eq!(
                sorted(trace.as_array().expect("trace").clone()),
                sorted(spans.clone()),
                "/api/v2/trace/{id}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed trace headers

#[test]
fn malformed_trace_headers_are_counted_and_ignored() {
    let _serial = serial();
    let bad = serde_json::json!([
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01"},
        {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},
        {"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"},
        {"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"b3": "garbage"},
        {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x"},
        {"b3": "zz-e457b5a2e4d86bd1"},
        {"X-B3-TraceId": "not-hex-at-all", "X-B3-SpanId": "e457b5a2e4d86bd1"},
        {"X-B3-TraceId": "80f198ee56343ba864fe8b2a57d3eff7"},
    ]);
    let sets = bad.as_array().expect("sets").len();
    let count = 2 * sets;
    let collector = Collector::start("tr6-coll", &[]);
    let agent = start_agent(&agent_args(&collector.endpoint(), &[]));
    let before = agent.value(CONTEXT_INVALID, &[]);
    let server = Service::start("tr6-svc", "tr6-service", None, "none");
    run_client(
        "tr6-cli",
        "tr6-client",
        server.port,
        count,
        &[("--headers-json", &bad.to_string())],
    );
    let served = server.finish();
    assert_eq!(served.len(), count);
    let spans = collector.wait_spans(&["tr6-client", "tr6-service"], 2 * count);
    // Both ends of every request are on this node: each observed side (CLIENT and SERVER span)
    // saw the malformed header once.
    let after = agent.wait_for(CONTEXT_INVALID, &[], before + (2 * count) as f64, EXPORT);
    drop(after);
    let stats = collector.stats();
    assert_eq!(stats["rejected_posts"], 0, "collector: {stats}");
    let bad_ids = [
        "4bf92f3577b34da6a3ce929d0e0e473",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "80f198ee56343ba864fe8b2a57d3eff7",
        "00000000000000000000000000000000",
    ];
    let traces = by_trace(&spans);
    assert_eq!(
        traces.len(),
        count,
        "a new trace per request:\n{}",
        describe(&spans)
    );
    for spans in traces.values() {
        let c = one(spans, "tr6-client", "CLIENT");
        let s = one(spans, "tr6-service", "SERVER");
        assert!(!bad_ids.contains(&trace_id(c)), "{}", describe(spans));
        assert!(
            !["00f067aa0ba902b7", "e457b5a2e4d86bd1"].contains(&id(c)),
            "{}",
            describe(spans)
        );
        assert_eq!(parent(c), None, "{}", describe(spans));
        assert_eq!(parent(s), Some(id(c)), "{}", describe(spans));
        assert!(
            !flag(s, "shared") && !flag(s, "debug"),
            "{}",
            describe(spans)
        );
    }
}
