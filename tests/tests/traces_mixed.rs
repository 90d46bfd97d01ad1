//! Traces, instrumented and plain services together: applications that run the OpenTelemetry
//! Python SDK (their own spans, ids and propagation: W3C, B3 single and multi header) mixed with
//! plain Python services and a plain proxy (nginx). For every request, the union of the spans
//! the applications' SDK exported and the spans meshtap exported is exactly one trace (an SDK's
//! trace id), of exactly the expected spans, and every `parentId` in it names a span in it.
//! With `--instrumented-spans skip` an instrumented process's spans appear once (its SDK's).
//!
//! Orders: instrumented caller -> plain callee; plain caller -> instrumented service -> plain
//! callee (the SDK starts the trace: meshtap's spans of the request adopt it); two instrumented
//! services with a plain proxy between them (the second continues the first's trace). And two
//! instrumented services with a plain service between them that passes no context on: the second
//! SDK starts a second trace, which nothing can join to the first (both SDKs exported their spans
//! already); the request's spans form two traces, each whole, and the split is counted.
//!
//! How the numbers are kept exact on a node where everything is observed: see
//! [`meshtap_tests::traces`]; here every program has a service name unique to its scenario, and
//! the same process name (a client that exits at once may be gone before the agent reads its
//! environment, and is then named by its process name).

use std::net::SocketAddr;

use meshtap_tests::traces::{
    OtelService, Service, agent_args, assert_one_trace_per_request, assert_traces, run_client,
    run_otel_client, start_agent,
};
use meshtap_tests::zipkin::Collector;
use meshtap_tests::{Agent, Nginx, NginxConfig, free_port, serial};
use serde_json::Value;

/// Requests per scenario.
const COUNT: usize = 3;
/// The SDK's propagators (`otel_service.py --propagator`).
const PROPAGATORS: [&str; 3] = ["w3c", "b3", "b3multi"];
const SKIPPED: &str = "meshtap_spans_instrumented_skipped_total";
const UNMERGED: &str = "meshtap_spans_unmerged_total";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Report,
    Skip,
}

/// The agent and the collector every scenario of one mode shares.
struct Node {
    agent: Agent,
    collector: Collector,
    mode: Mode,
}

impl Node {
    /// Spans skipped and requests unmerged so far.
    fn counters(&self) -> (f64, f64, f64) {
        let m = self.agent.metrics();
        (
            m.value(SKIPPED, &[]),
            m.value(UNMERGED, &[("reason", "emitted")]),
            m.value(UNMERGED, &[("reason", "other_trace")]),
        )
    }

    /// Checks one scenario: `sdk` (what the applications exported) with meshtap's spans of
    /// `services` (`report` or `skip` many per request) form one trace per request of the
    /// `report` or `skip` spans; `skipped` spans per request were left to the SDKs, none
    /// unmerged.
    fn check(
        &self,
        before: (f64, f64, f64),
        sdk: &[Value],
        services: &[&str],
        report: &[(&str, &str, bool)],
        skip: &[(&str, &str, bool)],
    ) {
        let expected = match self.mode {
            Mode::Report => report,
            Mode::Skip => skip,
        };
        let from_meshtap = expected.iter().filter(|(_, _, sdk)| !sdk).count();
        let spans = self.collector.wait_spans(services, from_meshtap * COUNT);
        assert_eq!(
            sdk.len(),
            expected.iter().filter(|(_, _, sdk)| *sdk).count() * COUNT,
            "the SDKs' spans: {sdk:?}"
        );
        assert_one_trace_per_request(sdk, &spans, COUNT, expected);
        let skipped = match self.mode {
            Mode::Report => 0,
            Mode::Skip => (report.len() - skip.len()) * COUNT,
        };
        let after = self.counters();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1, after.2 - before.2),
            (skipped as f64, 0.0, 0.0),
            "{services:?}: spans skipped, requests unmerged (emitted, other_trace)"
        );
    }

    /// An instrumented caller (the SDK's CLIENT span starts each trace) -> a plain callee.
    fn instrumented_caller_plain_callee(&self, tag: &str, propagator: &str) {
        let (caller, callee) = (format!("{tag}a-caller"), format!("{tag}a-callee"));
        let before = self.counters();
        let server = Service::start(&callee, &callee, None, "none");
        let sdk = run_otel_client(&caller, &caller, server.port, COUNT, "/item", propagator);
        assert_eq!(server.finish().len(), COUNT);
        let (caller, callee) = (caller.as_str(), callee.as_str());
        self.check(
            before,
            &sdk,
            &[caller, callee],
            &[
                (caller, "CLIENT", true),
                (caller, "CLIENT", false),
                (callee, "SERVER", false),
            ],
            &[(caller, "CLIENT", true), (callee, "SERVER", false)],
        );
    }

    /// A plain caller (no header) -> an instrumented service, whose SDK starts a trace ->
    /// a plain callee: the caller's CLIENT span and the service's SERVER span, linked by
    /// meshtap, take the SDK's trace id.
    fn plain_caller_instrumented_plain_callee(&self, tag: &str, propagator: &str) {
        let (caller, app, callee) = (
            format!("{tag}b-caller"),
            format!("{tag}b-app"),
            format!("{tag}b-callee"),
        );
        let before = self.counters();
        let backend = Service::start(&callee, &callee, None, "none");
        let service = OtelService::start(&app, &app, Some(backend.port), propagator);
        run_client(
            &caller,
            &caller,
            service.port,
            COUNT,
            &[("--propagate", "none")],
        );
        let sdk = service.finish();
        assert_eq!(backend.finish().len(), COUNT);
        let (caller, app, callee) = (caller.as_str(), app.as_str(), callee.as_str());
        self.check(
            before,
            &sdk,
            &[caller, app, callee],
            &[
                (caller, "CLIENT", false),
                (app, "SERVER", false),
                (app, "CLIENT", false),
                (callee, "SERVER", false),
                (app, "SERVER", true),
                (app, "CLIENT", true),
            ],
            &[
                (caller, "CLIENT", false),
                (callee, "SERVER", false),
                (app, "SERVER", true),
                (app, "CLIENT", true),
            ],
        );
    }

    /// An instrumented caller -> nginx (plain: passes the context on unchanged) -> an
    /// instrumented service continuing the caller's trace -> a plain callee.
    fn two_instrumented_with_a_plain_proxy_between(
        &self,
        tag: &str,
        propagator: &str,
        proxy_port: u16,
    ) {
        let (caller, proxy, app, callee) = (
            format!("{tag}c-caller"),
            proxy_name(tag),
            format!("{tag}c-app"),
            format!("{tag}c-callee"),
        );
        let before = self.counters();
        let backend = Service::start(&callee, &callee, None, "none");
        let service = OtelService::start(&app, &app, Some(backend.port), propagator);
        let front: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().expect("addr");
        let upstream: SocketAddr = format!("127.0.0.1:{}", service.port).parse().expect("addr");
        let nginx = Nginx::start(NginxConfig::new(front).backend(upstream), None);
        let mut sdk = run_otel_client(&caller, &caller, proxy_port, COUNT, "/api/item", propagator);
        sdk.extend(service.finish());
        assert_eq!(backend.finish().len(), COUNT);
        nginx.stop();
        let (caller, proxy, app, callee) = (
            caller.as_str(),
            proxy.as_str(),
            app.as_str(),
            callee.as_str(),
        );
        self.check(
            before,
            &sdk,
            &[caller, proxy, app, callee],
            &[
                (caller, "CLIENT", true),
                (caller, "CLIENT", false),
                (proxy, "SERVER", false),
                (proxy, "CLIENT", false),
                (app, "SERVER", false),
                (app, "CLIENT", false),
                (app, "SERVER", true),
                (app, "CLIENT", true),
                (callee, "SERVER", false),
            ],
            &[
                (caller, "CLIENT", true),
                (proxy, "SERVER", false),
                (proxy, "CLIENT", false),
                (app, "SERVER", true),
                (app, "CLIENT", true),
                (callee, "SERVER", false),
            ],
        );
    }
}

impl Node {
    /// An instrumented caller -> a plain service that passes no context on -> an instrumented
    /// service, whose SDK starts a second trace -> a plain callee: meshtap's spans split where
    /// the plain service calls out (its CLIENT span goes to the second trace, its SERVER span
    /// stays in the first), each trace whole, one `other_trace` per request.
    fn two_instrumented_with_a_plain_service_between(&self, tag: &str, propagator: &str) {
        let (caller, plain, app, callee) = (
            format!("{tag}d-caller"),
            format!("{tag}d-plain"),
            format!("{tag}d-app"),
            format!("{tag}d-callee"),
        );
        let before = self.counters();
        let backend = Service::start(&callee, &callee, None, "none");
        let service = OtelService::start(&app, &app, Some(backend.port), propagator);
        let middle = Service::start(&plain, &plain, Some(service.port), "none");
        let mut sdk = run_otel_client(&caller, &caller, middle.port, COUNT, "/item", propagator);
        assert_eq!(middle.finish().len(), COUNT);
        sdk.extend(service.finish());
        assert_eq!(backend.finish().len(), COUNT);
        let (caller, plain, app, callee) = (
            caller.as_str(),
            plain.as_str(),
            app.as_str(),
            callee.as_str(),
        );
        let services = [caller, plain, app, callee];
        let (first, second): (&[_], &[_]) = match self.mode {
            Mode::Report => (
                &[
                    (caller, "CLIENT", true),
                    (caller, "CLIENT", false),
                    (plain, "SERVER", false),
                ],
                &[
                    (plain, "CLIENT", false),
                    (app, "SERVER", false),
                    (app, "CLIENT", false),
                    (app, "SERVER", true),
                    (app, "CLIENT", true),
                    (callee, "SERVER", false),
                ],
            ),
            Mode::Skip => (
                &[(caller, "CLIENT", true), (plain, "SERVER", false)],
                &[
                    (plain, "CLIENT", false),
                    (app, "SERVER", true),
                    (app, "CLIENT", true),
                    (callee, "SERVER", false),
                ],
            ),
        };
        let from_meshtap = first.iter().chain(second).filter(|s| !s.2).count();
        let spans = self.collector.wait_spans(&services, from_meshtap * COUNT);
        assert_traces(&sdk, &spans, COUNT, &[first, second]);
        let skipped = match self.mode {
            Mode::Report => 0,
            Mode::Skip => 3 * COUNT,
        };
        let after = self.counters();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1, after.2 - before.2),
            (skipped as f64, 0.0, COUNT as f64),
            "{services:?}: spans skipped, requests unmerged (emitted, other_trace)"
        );
    }
}

fn proxy_name(tag: &str) -> String {
    format!("{tag}c-proxy")
}

/// Every order, with each propagator, under one agent running with `--instrumented-spans mode`.
fn every_order(mode: Mode) {
    let _serial = serial();
    let flag = match mode {
        Mode::Report => "report",
        Mode::Skip => "skip",
    };
    let collector = Collector::start(&format!("mx-{flag}-coll"), &[]);
    let tags: Vec<String> = (0..PROPAGATORS.len())
        .map(|i| format!("mx{}{i}", &flag[..1]))
        .collect();
    let proxy_ports: Vec<u16> = tags.iter().map(|_| free_port()).collect();
    let mut args = agent_args(
        &collector.endpoint(),
        &[("--instrumented-spans", flag), ("--trace-store-rate", "0")],
    );
    for (tag, port) in tags.iter().zip(&proxy_ports) {
        args.push("--service-port".to_owned());
        args.push(format!("{port}={}", proxy_name(tag)));
    }
    let node = Node {
        agent: start_agent(&args),
        collector,
        mode,
    };
    for ((propagator, tag), port) in PROPAGATORS.iter().zip(&tags).zip(&proxy_ports) {
        node.instrumented_caller_plain_callee(tag, propagator);
        node.plain_caller_instrumented_plain_callee(tag, propagator);
        node.two_instrumented_with_a_plain_proxy_between(tag, propagator, *port);
        node.two_instrumented_with_a_plain_service_between(tag, propagator);
    }
    let stats = node.collector.stats();
    assert_eq!(stats["rejected_posts"], 0, "collector: {stats}");
}

/// `--instrumented-spans report` (the default): meshtap's spans of instrumented processes sit
/// beside their SDK's, in the SDK's trace.
#[test]
fn instrumented_and_plain_services_form_one_trace_per_request() {
    every_order(Mode::Report);
}

/// `--instrumented-spans skip`: the instrumented processes' spans appear once, their SDK's;
/// the plain neighbours' spans are meshtap's, in the same trace.
#[test]
fn skip_leaves_instrumented_processes_their_own_spans() {
    every_order(Mode::Skip);
}
