//! Traces, sampling: at ratio 0 only debug traces and contexts that say sampled are kept; a
//! context that says not sampled produces no span, even at ratio 1, and is counted.
//!
//! How the numbers are kept exact on a node where everything is observed: see
//! [`meshtap_tests::traces`].

use std::collections::BTreeSet;

use meshtap_tests::serial;
use meshtap_tests::spans::{describe, flag, keys, trace_id, window};
use meshtap_tests::traces::{
    EXPORTED, Service, agent_args, header, micros, requests, run_client, start_agent,
};
use meshtap_tests::zipkin::{Collector, EXPORT, api};
use serde_json::Value;

const NOT_SAMPLED: &str = "meshtap_spans_not_sampled_total";

// ---------------------------------------------------------------------------------------------
// Sampling

/// At ratio 0 only debug traces are kept: not requests without context, not contexts that
/// say not sampled.
#[test]
fn ratio_zero_keeps_only_debug_traces() {
    const EACH: usize = 8;
    let _serial = serial();
    let collector = Collector::start("tr7-coll", &[]);
    let agent = start_agent(&agent_args(
        &collector.endpoint(),
        &[("--sampling-ratio", "0")],
    ));
    let server = Service::start("tr7-svc", "tr7-service", None, "none");
    for mode in ["none", "w3c-off", "b3-off"] {
        run_client(
            "tr7-cli",
            "tr7-client",
            server.port,
            EACH,
            &[("--propagate", mode)],
        );
    }
    let debug = run_client(
        "tr7-cli",
        "tr7-client",
        server.port,
        EACH,
        &[("--propagate", "b3-debug")],
    );
    server.finish();
    let spans = collector.wait_spans(&["tr7-client", "tr7-service"], 2 * EACH);
    agent.wait_for(EXPORTED, &[], (2 * EACH) as f64, EXPORT);
    let wanted: BTreeSet<&str> = requests(&debug)
        .iter()
        .map(|r| header(r, "X-B3-TraceId"))
        .collect();
    for s in &spans {
        assert!(flag(s, "debug"), "{}", describe(&spans));
        assert!(wanted.contains(trace_id(s)), "{}", describe(&spans));
    }
    // The store holds the same: nothing of the unsampled requests.
    let listed = api(&agent, "/api/v2/traces?serviceName=tr7-service&limit=1000");
    let listed: Vec<Value> = listed
        .as_array()
        .expect("traces")
        .iter()
        .flat_map(|t| t.as_array().expect("trace").clone())
        .collect();
    assert_eq!(keys(&listed), keys(&spans), "store at ratio 0");
    let m = agent.metrics();
    assert_eq!(m.value(EXPORTED, &[]), (2 * EACH) as f64);
}

/// A context that says not sampled produces no span even at ratio 1.
#[test]
fn unsampled_contexts_produce_no_spans() {
    const EACH: usize = 6;
    let _serial = serial();
    let collector = Collector::start("tr7u-coll", &[]);
    let agent = start_agent(&agent_args(&collector.endpoint(), &[]));
    let before = agent.value(NOT_SAMPLED, &[]);
    let server = Service::start("tr7u-svc", "tr7u-service", None, "none");
    for mode in ["w3c-off", "b3-off"] {
        run_client(
            "tr7u-cli",
            "tr7u-client",
            server.port,
            EACH,
            &[("--propagate", mode)],
        );
    }
    let single = serde_json::json!([
        {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"},
        {"b3": "a0f198ee56343ba864fe8b2a57d3eff7-a457b5a2e4d86bd1-0-05e3ac9a4f6e3b90"},
    ]);
    run_client(
        "tr7u-cli",
        "tr7u-client",
        server.port,
        EACH,
        &[("--headers-json", &single.to_string())],
    );
    // Control: plain requests, sent last, do become spans.
    let plain = run_client("tr7u-cli", "tr7u-client", server.port, EACH, &[]);
    server.finish();
    let spans = collector.wait_spans(&["tr7u-client", "tr7u-service"], 2 * EACH);
    let first_plain = micros(&requests(&plain)[0]["t"]);
    for s in &spans {
        assert!(
            window(s).0 + 5000 >= first_plain,
            "a span of an unsampled request:\n{}",
            describe(&spans)
        );
    }
    // Every observed side of the 3 × EACH unsampled requests is counted.
    agent.wait_for(NOT_SAMPLED, &[], before + (2 * 3 * EACH) as f64, EXPORT);
}

/// A context that says sampled is honoured whatever the local ratio: `--sampling-ratio` decides
/// for traces that start here ("no spans exported for requests without context").
#[test]
fn sampled_contexts_are_kept_at_ratio_zero() {
    const EACH: usize = 5;
    let _serial = serial();
    let collector = Collector::start("tr7s-coll", &[]);
    let agent = start_agent(&agent_args(
        &collector.endpoint(),
        &[("--sampling-ratio", "0")],
    ));
    let server = Service::start("tr7s-svc", "tr7s-service", None, "none");
    let w3c = run_client(
        "tr7s-cli",
        "tr7s-client",
        server.port,
        EACH,
        &[("--propagate", "w3c")],
    );
    let b3 = run_client(
        "tr7s-cli",
        "tr7s-client",
        server.port,
        EACH,
        &[("--propagate", "b3")],
    );
    server.finish();
    let mut wanted: BTreeSet<String> = requests(&b3)
        .iter()
        .map(|r| header(r, "X-B3-TraceId").to_owned())
        .collect();
    wanted.extend(requests(&w3c).iter().map(|r| {
        header(r, "traceparent")
            .split('-')
            .nth(1)
            .expect("id")
            .to_owned()
    }));
    let spans = collector.wait_spans(&["tr7s-client", "tr7s-service"], 4 * EACH);
    let got: BTreeSet<String> = spans.iter().map(|s| trace_id(s).to_owned()).collect();
    assert_eq!(got, wanted, "{}", describe(&spans));
    agent.wait_for(EXPORTED, &[], (4 * EACH) as f64, EXPORT);
}
