//! Telemetry configuration: log format and filter, and the standard OpenTelemetry variables.
//!
//! Only this crate reads `OTEL_*` variables. Each is declared below beside its default.
//! [`TelemetryConfig::from_env`] reads the process environment; [`TelemetryConfig::from_lookup`]
//! takes any lookup function, which is how tests configure telemetry without touching the
//! (process-global) environment. A value that cannot be parsed is not fatal: it is reported in
//! [`TelemetryConfig::warnings`] (logged once at [`crate::init`]) and the default is used.

use std::time::Duration;

/// Disables the SDK entirely (`true`/`false`).
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// Default of [`OTEL_SDK_DISABLED`].
pub const OTEL_SDK_DISABLED_DEFAULT: bool = false;
/// Base OTLP endpoint for all signals. Unset means tracing is off.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Traces-only OTLP endpoint; wins over [`OTEL_EXPORTER_OTLP_ENDPOINT`] and is used verbatim.
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Default endpoint: none, so tracing costs nothing unless asked for.
pub const OTEL_EXPORTER_OTLP_ENDPOINT_DEFAULT: Option<&str> = None;
/// OTLP transport for all signals: `grpc` or `http/protobuf`.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// Traces-only OTLP transport; wins over [`OTEL_EXPORTER_OTLP_PROTOCOL`].
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// Default transport: gRPC, as vLLM and llm-d use.
pub const OTEL_EXPORTER_OTLP_PROTOCOL_DEFAULT: OtlpProtocol = OtlpProtocol::Grpc;
/// Export timeout in milliseconds.
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// Default of [`OTEL_EXPORTER_OTLP_TIMEOUT`].
pub const OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Service name; wins over `service.name` in [`OTEL_RESOURCE_ATTRIBUTES`].
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Extra resource attributes, `key=value` pairs separated by commas (values percent-encoded).
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Sampler name (`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
/// `parentbased_always_off`, `parentbased_traceidratio`).
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// Default sampler: parent-based ratio sampling.
pub const OTEL_TRACES_SAMPLER_DEFAULT: &str = "parentbased_traceidratio";
/// Sampler argument: the ratio for the `*traceidratio` samplers, in `[0, 1]`.
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// Default ratio: sample everything that reaches a root (production sets e.g. `0.1`).
pub const OTEL_TRACES_SAMPLER_ARG_DEFAULT: f64 = 1.0;
/// Log filter in `tracing_subscriber::EnvFilter` syntax.
pub const RUST_LOG: &str = "RUST_LOG";
/// Default of [`RUST_LOG`].
pub const RUST_LOG_DEFAULT: &str = "info";
/// Log format, `text` or `json` (also the `--log-format` flag of every service).
pub const LLMD_LOG_FORMAT: &str = "LLMD_LOG_FORMAT";

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// Which spans are recorded and exported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Follow the parent's sampling decision when there is a parent (W3C `sampled` flag).
    pub parent_based: bool,
    /// Fraction of root traces sampled, in `[0, 1]`.
    pub ratio: f64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            parent_based: true,
            ratio: OTEL_TRACES_SAMPLER_ARG_DEFAULT,
        }
    }
}

/// OpenTelemetry tracing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `OTEL_SDK_DISABLED`: no tracer at all, whatever else is set.
    pub sdk_disabled: bool,
    /// Full URL the exporter sends to (for HTTP, including `/v1/traces`). `None`: tracing off.
    pub endpoint: Option<String>,
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Export timeout.
    pub timeout: Duration,
    /// `OTEL_SERVICE_NAME`, if set; otherwise `service.name` from the resource attributes, and
    /// otherwise the name the service passes to [`crate::init`].
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded.
    pub resource_attributes: Vec<(String, String)>,
    /// Sampling.
    pub sampler: SamplerConfig,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            sdk_disabled: OTEL_SDK_DISABLED_DEFAULT,
            endpoint: OTEL_EXPORTER_OTLP_ENDPOINT_DEFAULT.map(str::to_owned),
            protocol: OTEL_EXPORTER_OTLP_PROTOCOL_DEFAULT,
            timeout: OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT,
            service_name: None,
            resource_attributes: Vec::new(),
            sampler: SamplerConfig::default(),
        }
    }
}

impl TracingConfig {
    /// True when spans will be recorded and exported.
    pub fn enabled(&self) -> bool {
        !self.sdk_disabled && self.endpoint.is_some()
    }

    /// Sends spans to `endpoint` over `protocol` (the endpoint is used verbatim).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        self.endpoint = Some(endpoint.into());
        self.protocol = protocol;
        self
    }
}

/// Everything [`crate::init`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Text or JSON log lines.
    pub log_format: LogFormat,
    /// `EnvFilter` directives for logs (`RUST_LOG`).
    pub log_filter: String,
    /// OpenTelemetry tracing.
    pub tracing: TracingConfig,
    /// Flush spans when SIGTERM or Ctrl-C arrives (see [`crate::TelemetryGuard::shutdown_token`]).
    pub flush_on_signal: bool,
    /// Problems found while reading the configuration; logged once by [`crate::init`].
    pub warnings: Vec<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: RUST_LOG_DEFAULT.to_owned(),
            tracing: TracingConfig::default(),
            flush_on_signal: true,
            warnings: Vec::new(),
        }
    }
}

impl TelemetryConfig {
    /// Reads `RUST_LOG`, `LLMD_LOG_FORMAT` and the `OTEL_*` variables from the environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Self::from_env`], with `lookup` standing in for the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut warnings = Vec::new();
        let mut cfg = Self::default();

        if let Some(filter) = get(RUST_LOG) {
            cfg.log_filter = filter;
        }
        if let Some(format) = get(LLMD_LOG_FORMAT) {
            match format.to_ascii_lowercase().as_str() {
                "text" => cfg.log_format = LogFormat::Text,
                "json" => cfg.log_format = LogFormat::Json,
                other => warnings.push(format!(
                    "{LLMD_LOG_FORMAT}={other:?} is not text|json; using text"
                )),
            }
        }

        let t = &mut cfg.tracing;
        if let Some(v) = get(OTEL_SDK_DISABLED) {
            t.sdk_disabled = v.eq_ignore_ascii_case("true");
        }
        let protocol_var =
            get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL).or_else(|| get(OTEL_EXPORTER_OTLP_PROTOCOL));
        if let Some(p) = protocol_var {
            match p.to_ascii_lowercase().as_str() {
                "grpc" => t.protocol = OtlpProtocol::Grpc,
                "http/protobuf" => t.protocol = OtlpProtocol::HttpProtobuf,
                other => warnings.push(format!(
                    "OTLP protocol {other:?} is not supported (grpc, http/protobuf); using grpc"
                )),
            }
        }
        t.endpoint = match (
            get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
            get(OTEL_EXPORTER_OTLP_ENDPOINT),
        ) {
            (Some(signal), _) => Some(signal),
            (None, Some(base)) => Some(match t.protocol {
                OtlpProtocol::Grpc => base,
                // Per the OTLP exporter spec, the generic endpoint is a base URL for HTTP.
                OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
            }),
            (None, None) => None,
        };
        if let Some(ms) = get(OTEL_EXPORTER_OTLP_TIMEOUT) {
            match ms.parse::<u64>() {
                Ok(ms) => t.timeout = Duration::from_millis(ms),
                Err(_) => warnings.push(format!(
                    "{OTEL_EXPORTER_OTLP_TIMEOUT}={ms:?} is not milliseconds; using 10000"
                )),
            }
        }
        t.service_name = get(OTEL_SERVICE_NAME);
        if let Some(attrs) = get(OTEL_RESOURCE_ATTRIBUTES) {
            t.resource_attributes = parse_resource_attributes(&attrs, &mut warnings);
        }
        t.sampler = parse_sampler(
            get(OTEL_TRACES_SAMPLER),
            get(OTEL_TRACES_SAMPLER_ARG),
            &mut warnings,
        );

        cfg.warnings = warnings;
        cfg
    }
}

fn parse_sampler(
    name: Option<String>,
    arg: Option<String>,
    warnings: &mut Vec<String>,
) -> SamplerConfig {
    let name = name
        .unwrap_or_else(|| OTEL_TRACES_SAMPLER_DEFAULT.to_owned())
        .to_ascii_lowercase();
    let (parent_based, uses_arg) = match name.as_str() {
        "always_on" => {
            return SamplerConfig {
                parent_based: false,
                ratio: 1.0,
            };
        }
        "always_off" => {
            return SamplerConfig {
                parent_based: false,
                ratio: 0.0,
            };
        }
        "parentbased_always_on" => {
            return SamplerConfig {
                parent_based: true,
                ratio: 1.0,
            };
        }
        "parentbased_always_off" => {
            return SamplerConfig {
                parent_based: true,
                ratio: 0.0,
            };
        }
        "traceidratio" => (false, true),
        "parentbased_traceidratio" => (true, true),
        other => {
            warnings.push(format!(
                "{OTEL_TRACES_SAMPLER}={other:?} is not supported; using {OTEL_TRACES_SAMPLER_DEFAULT}"
            ));
            (true, true)
        }
    };
    let ratio = match arg.as_deref().filter(|_| uses_arg).map(str::parse::<f64>) {
        None => OTEL_TRACES_SAMPLER_ARG_DEFAULT,
        Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
        Some(_) => {
            warnings.push(format!(
                "{OTEL_TRACES_SAMPLER_ARG}={:?} is not a ratio in [0, 1]; using {OTEL_TRACES_SAMPLER_ARG_DEFAULT}",
                arg.as_deref().unwrap_or_default()
            ));
            OTEL_TRACES_SAMPLER_ARG_DEFAULT
        }
    };
    SamplerConfig {
        parent_based,
        ratio,
    }
}

/// Parses `k1=v1,k2=v2` with percent-encoded values, as the OTel resource SDK spec describes.
fn parse_resource_attributes(raw: &str, warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.push((percent_decode(k.trim()), percent_decode(v.trim())));
            }
            _ => warnings.push(format!(
                "{OTEL_RESOURCE_ATTRIBUTES}: ignoring malformed item {item:?}"
            )),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> TelemetryConfig {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetryConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_means_tracing_off() {
        let c = cfg(&[]);
        assert!(!c.tracing.enabled());
        assert_eq!(c.log_filter, "info");
        assert_eq!(
            c.tracing.sampler,
            SamplerConfig {
                parent_based: true,
                ratio: 1.0
            }
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn grpc_endpoint_is_used_verbatim_and_http_gets_the_signal_path() {
        let c = cfg(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4317")]);
        assert_eq!(c.tracing.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(c.tracing.protocol, OtlpProtocol::Grpc);
        assert!(c.tracing.enabled());

        let c = cfg(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318/"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
        ]);
        assert_eq!(
            c.tracing.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(c.tracing.protocol, OtlpProtocol::HttpProtobuf);

        let c = cfg(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://base:4318"),
            (
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "http://traces:9999/custom",
            ),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/protobuf"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
        ]);
        assert_eq!(
            c.tracing.endpoint.as_deref(),
            Some("http://traces:9999/custom")
        );
        assert_eq!(c.tracing.protocol, OtlpProtocol::HttpProtobuf);
    }

    #[test]
    fn sdk_disabled_wins_over_an_endpoint() {
        let c = cfg(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://x:4317"),
            (OTEL_SDK_DISABLED, "TRUE"),
        ]);
        assert!(!c.tracing.enabled());
    }

    #[test]
    fn samplers_parse_and_bad_values_fall_back_with_a_warning() {
        let c = cfg(&[
            (OTEL_TRACES_SAMPLER, "parentbased_traceidratio"),
            (OTEL_TRACES_SAMPLER_ARG, "0.1"),
        ]);
        assert_eq!(
            c.tracing.sampler,
            SamplerConfig {
                parent_based: true,
                ratio: 0.1
            }
        );
        let c = cfg(&[(OTEL_TRACES_SAMPLER, "always_off")]);
        assert_eq!(c.tracing.sampler.ratio, 0.0);
        assert!(!c.tracing.sampler.parent_based);
        let c = cfg(&[
            (OTEL_TRACES_SAMPLER, "traceidratio"),
            (OTEL_TRACES_SAMPLER_ARG, "7"),
        ]);
        assert_eq!(c.tracing.sampler.ratio, 1.0);
        assert_eq!(c.warnings.len(), 1);
        let c = cfg(&[(OTEL_TRACES_SAMPLER, "jaeger_remote")]);
        assert!(c.tracing.sampler.parent_based);
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn resource_attributes_are_percent_decoded() {
        let c = cfg(&[(
            OTEL_RESOURCE_ATTRIBUTES,
            "k8s.pod.name=epp-0, team=llm%2Dd%20serving,broken,=x",
        )]);
        assert_eq!(
            c.tracing.resource_attributes,
            vec![
                ("k8s.pod.name".to_owned(), "epp-0".to_owned()),
                ("team".to_owned(), "llm-d serving".to_owned())
            ]
        );
        assert_eq!(c.warnings.len(), 2);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn log_settings() {
        let c = cfg(&[(RUST_LOG, "llmd_epp=debug"), (LLMD_LOG_FORMAT, "JSON")]);
        assert_eq!(c.log_filter, "llmd_epp=debug");
        assert_eq!(c.log_format, LogFormat::Json);
        let c = cfg(&[(LLMD_LOG_FORMAT, "xml")]);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.warnings.len(), 1);
    }
}
