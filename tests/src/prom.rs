//! A small parser for the Prometheus / OpenMetrics text exposition format, and queries on it.
//!
//! Only samples are kept: `# HELP`, `# TYPE`, `# UNIT`, `# EOF` and other comment lines are
//! skipped. Label values may contain the escapes `\\`, `\"` and `\n`.

use std::collections::BTreeMap;
use std::fmt;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// True when every `(label, value)` pair is present on this sample.
    pub fn matches(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|have| have == v))
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{", self.name)?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        write!(f, "}} {}", self.value)
    }
}

/// A line of the exposition that is not valid.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
    pub text: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {:?}", self.line, self.reason, self.text)
    }
}

impl std::error::Error for ParseError {}

/// An expected value: `(metric name, labels to match, expected sum)`.
pub type Check<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// All samples of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse(text).map(|samples| Self { samples })
    }

    /// The samples named `name` carrying every one of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(labels))
    }

    /// Sum of the matching series; 0 when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        // `+ 0.0` turns the empty sum (-0.0) into 0.
        self.matching(name, labels).map(|s| s.value).sum::<f64>() + 0.0
    }

    /// Checks every `(name, labels, expected)` against this scrape and panics once, listing every
    /// mismatch with the series of that name, so one failing run shows all that is wrong.
    pub fn assert_values(&self, checks: &[Check<'_>]) {
        let problems: Vec<String> = checks
            .iter()
            .filter(|(name, labels, expected)| self.value(name, labels) != *expected)
            .map(|(name, labels, expected)| {
                format!(
                    "{name}{labels:?} = {}, expected {expected}; series of {name}:\n{}",
                    self.value(name, labels),
                    self.describe(name)
                )
            })
            .collect();
        assert!(
            problems.is_empty(),
            "{} of {} metric checks failed:\n{}",
            problems.len(),
            checks.len(),
            problems.join("\n")
        );
    }

    /// Every series named `name`, one per line, for failure messages.
    pub fn describe(&self, name: &str) -> String {
        let lines: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .map(ToString::to_string)
            .collect();
        if lines.is_empty() {
            format!("  (no series named {name})")
        } else {
            format!("  {}", lines.join("\n  "))
        }
    }
}

/// Parses every sample of a text exposition.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |reason: &str| ParseError {
            line: index + 1,
            reason: reason.to_owned(),
            text: raw.to_owned(),
        };
        samples.push(parse_sample(line).map_err(error)?);
    }
    Ok(samples)
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return Err("no metric name");
    }
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    // After the value may come a timestamp and, in OpenMetrics, an exemplar (`# {...} v`).
    let rest = rest.split(" # ").next().unwrap_or_default();
    let value_text = rest.split_whitespace().next().ok_or("no value")?;
    let value = parse_value(value_text).ok_or("bad value")?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `k="v",...}` and returns what follows the closing brace.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, &'static str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let key = rest[..eq].trim();
        if key.is_empty()
            || !key
                .chars()
                .enumerate()
                .all(|(i, c)| is_name_char(c, i == 0))
        {
            return Err("bad label name");
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value without opening quote")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err("unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    _ => return Err("bad escape in label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err("duplicate label");
        }
        rest = rest[close + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after label value");
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP meshtap_tcp_connections_opened Connections opened.
# TYPE meshtap_tcp_connections_opened counter
meshtap_tcp_connections_opened_total{client="mt-cli",server="10.0.0.1",server_port="80",role="client"} 3
meshtap_tcp_connections_opened_total{client="mt-cli",server="nginx",server_port="80",role="client"} 4
# TYPE meshtap_odd gauge
# UNIT meshtap_odd seconds
meshtap_odd{v="a \"quoted\" \\ back\nslash",} 1.5e3 1700000000
meshtap_plain 7
meshtap_hist_bucket{le="+Inf"} +Inf # {trace_id="x"} 1
# EOF
"#;

    #[test]
    fn parses_and_sums() {
        let m = Metrics::parse(TEXT).unwrap();
        assert_eq!(m.samples.len(), 5);
        let name = "meshtap_tcp_connections_opened_total";
        assert_eq!(m.value(name, &[("client", "mt-cli")]), 7.0);
        assert_eq!(m.value(name, &[("server", "nginx")]), 4.0);
        assert_eq!(m.value(name, &[("server", "none")]), 0.0);
        assert_eq!(m.value("meshtap_plain", &[]), 7.0);
        assert_eq!(m.value("meshtap_odd", &[]), 1500.0);
        assert_eq!(
            m.samples[2].labels["v"],
            "a \"quoted\" \\ back\nslash".to_owned()
        );
        assert!(
            m.value("meshtap_hist_bucket", &[("le", "+Inf")])
                .is_infinite()
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("meshtap_x{a=\"b} 1").is_err());
        assert!(parse("meshtap_x{a=b} 1").is_err());
        assert!(parse("meshtap_x one").is_err());
        assert!(parse("meshtap_x{a=\"1\",a=\"2\"} 1").is_err());
        let err = parse("ok 1\n{} 2").unwrap_err();
        assert_eq!(err.line, 2);
    }
}
