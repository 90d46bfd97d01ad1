//! The OTLP exporter's settings: `--otlp-endpoint` and the `--otlp-*` delivery flags (keys
//! `otlp_*` in the file), with their defaults, checked once at start-up.

use std::time::Duration;

use super::sink::Otlp;
use crate::export::delivery::{DeliveryConfig, EndpointError, Target};

/// Where and how spans are sent. Built by `config::Config::load` from the flags and the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// `http://host[:port][/path]` of an OTLP/HTTP receiver. Without a path, spans go to
    /// `/v1/traces`; a path is used as it is (the OpenTelemetry SDKs' rule for a per-signal
    /// endpoint). No TLS.
    pub endpoint: String,
    /// Batching, timeout, queue bound and retry budget; the defaults are the Zipkin sink's.
    pub delivery: DeliveryConfig,
}

impl OtlpConfig {
    /// Sends to `endpoint` with the default delivery settings.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            delivery: DeliveryConfig::default(),
        }
    }

    pub fn validate(&self) -> Result<(), OtlpConfigError> {
        Target::<Otlp>::parse(&self.endpoint).map_err(OtlpConfigError::Endpoint)?;
        let d = &self.delivery;
        if !(1..=100_000).contains(&d.batch_spans)
            || !(1..=10_000_000).contains(&d.queue_spans)
            || d.batch_spans > d.queue_spans
        {
            return Err(OtlpConfigError::Invalid {
                setting: "otlp_batch_spans / otlp_queue_spans (--otlp-batch-spans / --otlp-queue-spans)",
                value: format!("{} / {}", d.batch_spans, d.queue_spans),
                expected: "the batch must be 1..=100000 spans and the queue 1..=10000000 spans, batch <= queue",
            });
        }
        let ms = Duration::from_millis;
        if !(ms(10)..=ms(600_000)).contains(&d.request_timeout)
            || !(ms(1)..=ms(600_000)).contains(&d.flush_interval)
        {
            return Err(OtlpConfigError::Invalid {
                setting: "otlp_timeout_ms / otlp_flush_ms (--otlp-timeout-ms / --otlp-flush-ms)",
                value: format!(
                    "{} / {}",
                    d.request_timeout.as_millis(),
                    d.flush_interval.as_millis()
                ),
                expected: "must be 10..=600000 ms and 1..=600000 ms",
            });
        }
        Ok(())
    }
}

/// A setting of the OTLP exporter that cannot be used; one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OtlpConfigError {
    #[error(
        "{0} (--otlp-endpoint, key otlp_endpoint): give the http:// URL of an OTLP/HTTP receiver, such as http://otel-collector:4318"
    )]
    Endpoint(EndpointError),
    #[error("invalid {setting} = {value}: {expected}")]
    Invalid {
        setting: &'static str,
        value: String,
        expected: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_zipkin_sinks() {
        let c = OtlpConfig::new("http://127.0.0.1:4318");
        c.validate().unwrap();
        assert_eq!(c.delivery.batch_spans, 500);
        assert_eq!(c.delivery.queue_spans, 10_000);
        assert_eq!(c.delivery.flush_interval, Duration::from_secs(1));
        assert!(c.delivery.gzip);
        assert_eq!(c.delivery.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn bad_urls_say_what_to_do_in_one_line() {
        for (url, why) in [
            ("https://collector:4318", "https is not supported; use http"),
            ("collector:4318", "it must start with http://"),
            ("http://user:pw@collector:4318", "credentials"),
            ("http://", "invalid otlp endpoint"),
            ("", "invalid otlp endpoint"),
        ] {
            let err = OtlpConfig::new(url).validate().unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(err.contains("--otlp-endpoint"), "{url}: {err}");
            assert!(err.contains("http://otel-collector:4318"), "{url}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = OtlpConfig::new("https://c").validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid otlp endpoint \"https://c\": https is not supported; use http \
             (--otlp-endpoint, key otlp_endpoint): give the http:// URL of an OTLP/HTTP \
             receiver, such as http://otel-collector:4318"
        );
    }

    #[test]
    fn out_of_range_delivery_settings_name_their_flags() {
        let mut c = OtlpConfig::new("http://c:4318");
        c.delivery.batch_spans = 20_000;
        c.delivery.queue_spans = 10_000;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--otlp-batch-spans"), "{err}");
        let mut c = OtlpConfig::new("http://c:4318");
        c.delivery.request_timeout = Duration::from_millis(5);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--otlp-timeout-ms"), "{err}");
    }
}
