//! Trace context carried in request headers: W3C `traceparent` (and `tracestate`) and B3, both
//! multi-header (`X-B3-*`) and single-header (`b3`).
//!
//! Header values are attacker-controlled: anything malformed (wrong length, non-hex, all-zero
//! ids, unknown version `ff`) is rejected, counted by the caller, and the span starts a new
//! trace. A context never yields an id that Zipkin would reject.

/// A parsed incoming context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-hex digits (64-bit B3 ids are left-padded with zeros).
    pub trace_id: String,
    /// The caller's span id, 16 lower-hex digits.
    pub span_id: String,
    /// B3 only: the caller's parent span id.
    pub parent_id: Option<String>,
    /// `None`: no decision (defer to local sampling).
    pub sampled: Option<bool>,
    pub debug: bool,
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// W3C Trace Context: the callee creates a new span whose parent is `span_id`.
    W3c,
    /// B3: the callee's server span shares `span_id` with the caller's client span.
    B3,
}

/// Outcome of looking for a context in a request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    None,
    Valid(TraceContext),
    /// Present but malformed: ignored (and counted).
    Invalid,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn nonzero(s: &str) -> bool {
    s.bytes().any(|b| b != b'0')
}

/// A B3 trace id: 16 or 32 hex digits (case-insensitive on input), not all zero.
fn b3_trace_id(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let ok = (is_lower_hex(&s, 16) || is_lower_hex(&s, 32)) && nonzero(&s);
    ok.then(|| format!("{s:0>32}"))
}

fn b3_span_id(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    (is_lower_hex(&s, 16) && nonzero(&s)).then_some(s)
}

/// `traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`
/// (https://www.w3.org/TR/trace-context/#traceparent-header). Future versions may append
/// fields after the four; version `ff` is invalid; ids must be lower-case hex and not all zero.
pub fn parse_traceparent(value: &str) -> Option<TraceContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    if !is_lower_hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    if !is_lower_hex(trace_id, 32) || !nonzero(trace_id) {
        return None;
    }
    if !is_lower_hex(span_id, 16) || !nonzero(span_id) {
        return None;
    }
    if !is_lower_hex(flags, 2) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceContext {
        trace_id: trace_id.to_string(),
        span_id: span_id.to_string(),
        parent_id: None,
        sampled: Some(flags & 1 == 1),
        debug: false,
        format: Format::W3c,
    })
}

/// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`, or a lone sampling state
/// (`0`, `1`, `d`) (https://github.com/openzipkin/b3-propagation#single-header).
pub fn parse_b3_single(value: &str) -> Found {
    let value = value.trim();
    let parts: Vec<&str> = value.split('-').collect();
    if parts.len() == 1 {
        // A decision without ids: nothing to join.
        return match parts[0] {
            "0" | "1" | "d" => Found::None,
            _ => Found::Invalid,
        };
    }
    if parts.len() > 4 {
        return Found::Invalid;
    }
    let (Some(trace_id), Some(span_id)) = (b3_trace_id(parts[0]), b3_span_id(parts[1])) else {
        return Found::Invalid;
    };
    let (sampled, debug) = match parts.get(2) {
        None => (None, false),
        Some(&"1") => (Some(true), false),
        Some(&"0") => (Some(false), false),
        Some(&"d") => (Some(true), true),
        Some(_) => return Found::Invalid,
    };
    let parent_id = match parts.get(3) {
        None => None,
        Some(p) => match b3_span_id(p) {
            Some(p) => Some(p),
            None => return Found::Invalid,
        },
    };
    Found::Valid(TraceContext {
        trace_id,
        span_id,
        parent_id,
        sampled,
        debug,
        format: Format::B3,
    })
}

/// The context of a request with these (lower-case name) headers: `traceparent` first, then
/// `b3`, then `X-B3-*`. An invalid header is skipped in favour of a valid one in another format.
pub fn extract(headers: &[(&str, String)]) -> Found {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut invalid = false;
    if let Some(v) = get("traceparent") {
        match parse_traceparent(v) {
            Some(ctx) => return Found::Valid(ctx),
            None => invalid = true,
        }
    }
    if let Some(v) = get("b3") {
        match parse_b3_single(v) {
            Found::Valid(ctx) => return Found::Valid(ctx),
            Found::Invalid => invalid = true,
            Found::None => {}
        }
    }
    if let Some(trace) = get("x-b3-traceid") {
        let span = get("x-b3-spanid");
        let trace_id = b3_trace_id(trace);
        let span_id = span.and_then(b3_span_id);
        let parent = get("x-b3-parentspanid");
        let parent_id = parent.and_then(b3_span_id);
        let debug = get("x-b3-flags").is_some_and(|f| f.trim() == "1");
        let (sampled, bad_sampled) = match get("x-b3-sampled").map(str::trim) {
            None => (None, false),
            Some("1") | Some("true") => (Some(true), false),
            Some("0") | Some("false") => (Some(false), false),
            Some(_) => (None, true),
        };
        match (trace_id, span_id) {
            (Some(trace_id), Some(span_id))
                if !bad_sampled && (parent.is_none() || parent_id.is_some()) =>
            {
                return Found::Valid(TraceContext {
                    trace_id,
                    span_id,
                    parent_id,
                    sampled: if debug { Some(true) } else { sampled },
                    debug,
                    format: Format::B3,
                });
            }
            _ => invalid = true,
        }
    }
    if invalid { Found::Invalid } else { Found::None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn traceparent_valid_and_invalid() {
        let ctx =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id, "00f067aa0ba902b7");
        assert_eq!(ctx.sampled, Some(true));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A future version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn b3_single_and_multi() {
        let Found::Valid(ctx) =
            parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d-05e3ac9a4f6e3b90")
        else {
            panic!()
        };
        assert!(ctx.debug);
        assert_eq!(ctx.parent_id.as_deref(), Some("05e3ac9a4f6e3b90"));
        let Found::Valid(ctx) = parse_b3_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1-0") else {
            panic!()
        };
        assert_eq!(ctx.trace_id, "000000000000000064fe8b2a57d3eff7");
        assert_eq!(ctx.sampled, Some(false));
        assert_eq!(parse_b3_single("0"), Found::None);
        assert_eq!(parse_b3_single("zz-e457b5a2e4d86bd1"), Found::Invalid);

        let found = extract(&h(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ]));
        let Found::Valid(ctx) = found else { panic!() };
        assert_eq!(ctx.format, Format::B3);
        assert_eq!(ctx.parent_id.as_deref(), Some("0020000000000001"));
        let found = extract(&h(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "0000000000000000"),
        ]));
        assert_eq!(found, Found::Invalid);
        let found = extract(&h(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
        ]));
        let Found::Valid(ctx) = found else { panic!() };
        assert!(ctx.debug && ctx.sampled == Some(true));
    }

    #[test]
    fn invalid_traceparent_falls_back_to_b3_and_nothing_is_none() {
        let found = extract(&h(&[
            ("traceparent", "garbage"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]));
        assert!(matches!(
            found,
            Found::Valid(TraceContext {
                format: Format::B3,
                ..
            })
        ));
        assert_eq!(extract(&h(&[("traceparent", "garbage")])), Found::Invalid);
        assert_eq!(extract(&h(&[("host", "x")])), Found::None);
    }
}
