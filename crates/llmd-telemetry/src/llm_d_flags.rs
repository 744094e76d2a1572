//! llm-d's command-line conventions shared by the EPP and the P/D sidecar: Go durations
//! (`50ms`, `1m30s`) and the logging and tracing flags (`--v`, `--zap-*`, `--tracing`).

use std::time::Duration;

use crate::config::{LogFormat, TelemetryConfig};

/// Parses a Go duration (`50ms`, `2s`, `1m30s`, `1h`, `500us`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: missing unit (ns, us, ms, s, m, h)"))?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("{s:?}: unknown unit {other:?}")),
        };
        total += n * secs;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{s:?}: {e}"))
}

/// llm-d's logging and tracing flags (its EPP's and its sidecar's).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LoggingFlags {
    /// Log verbosity as llm-d counts it (≤3 info, 4 debug, ≥5 trace); used when RUST_LOG is
    /// unset (llm-d: --v).
    #[arg(long = "v", short = 'v', value_name = "LEVEL")]
    pub verbosity: Option<u8>,
    /// `json` or `console` log lines (llm-d: --zap-encoder; ours: --log-format).
    #[arg(long)]
    pub zap_encoder: Option<ZapEncoder>,
    /// `debug`, `info`, `error`, ... when RUST_LOG is unset (llm-d: --zap-log-level).
    #[arg(long)]
    pub zap_log_level: Option<String>,
    /// Development logging: debug level, text lines (llm-d: --zap-devel).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub zap_devel: Option<bool>,
    /// Accepted, no effect (llm-d: --zap-stacktrace-level).
    #[arg(long, hide = true)]
    pub zap_stacktrace_level: Option<String>,
    /// Accepted, no effect (llm-d: --zap-time-encoding).
    #[arg(long, hide = true)]
    pub zap_time_encoding: Option<String>,
    /// Export spans (with OTEL_EXPORTER_OTLP_ENDPOINT); false turns tracing off (llm-d:
    /// --tracing).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tracing: Option<bool>,
}

/// `--zap-encoder` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ZapEncoder {
    /// JSON lines.
    Json,
    /// Text lines.
    Console,
}

impl LoggingFlags {
    /// Applies the logging and tracing flags to a telemetry configuration (`RUST_LOG`, when
    /// set, wins over `--v` and `--zap-log-level`).
    pub fn apply(&self, mut config: TelemetryConfig) -> TelemetryConfig {
        match self.zap_encoder {
            Some(ZapEncoder::Json) => config.log_format = LogFormat::Json,
            Some(ZapEncoder::Console) => config.log_format = LogFormat::Text,
            None => {}
        }
        let rust_log_set = std::env::var_os(crate::config::RUST_LOG).is_some();
        if !rust_log_set {
            let level = match (
                self.verbosity,
                self.zap_log_level.as_deref(),
                self.zap_devel,
            ) {
                (_, Some(l), _) => Some(l.to_ascii_lowercase()),
                (Some(v), _, _) if v >= 5 => Some("trace".into()),
                (Some(4), _, _) => Some("debug".into()),
                (Some(_), _, _) => Some("info".into()),
                (None, None, Some(true)) => Some("debug".into()),
                _ => None,
            };
            if let Some(level) = level {
                config.log_filter = level;
            }
        }
        if self.tracing == Some(false) {
            config.tracing.sdk_disabled = true;
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
