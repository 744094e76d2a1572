//! A strict parser for the Prometheus text exposition format (version 0.0.4).
//!
//! Used to read model servers' `/metrics` (the EPP scrapes vLLM's queue and KV-cache gauges) and
//! to check our own output in tests. Written here rather than taken from `prometheus-parse`
//! because that crate rejects the `:` in vLLM's metric names (`vllm:num_requests_waiting`) and
//! silently skips lines it cannot read; this one accepts the full name grammar and reports the
//! first malformed line. It never panics on input.

use std::collections::HashMap;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (for histograms including `_bucket`, `_sum`, `_count`).
    pub name: String,
    /// Labels in the order they appeared, values unescaped.
    pub labels: Vec<(String, String)>,
    /// Value (`+Inf`, `-Inf` and `NaN` allowed).
    pub value: f64,
    /// Optional timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when every `(name, value)` of `want` is among this sample's labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Samples in order.
    pub samples: Vec<Sample>,
    /// `# HELP` text by metric family name.
    pub help: HashMap<String, String>,
    /// `# TYPE` by metric family name (`counter`, `gauge`, `histogram`, `summary`, `untyped`).
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// Samples called `name` whose labels include `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.has_labels(labels))
    }

    /// The value of the first sample called `name` with `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).next().map(|s| s.value)
    }

    /// Sum over every sample called `name` with `labels` (e.g. a counter across pods).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }

    /// A histogram's cumulative buckets `(le, count)` in order, `+Inf` last.
    pub fn buckets(&self, family: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let name = format!("{family}_bucket");
        let mut out: Vec<(f64, f64)> = self
            .find(&name, labels)
            .filter_map(|s| s.label("le").and_then(parse_value).map(|le| (le, s.value)))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// The first line that is not valid exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses exposition text.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let err = |reason| ParseError {
            line: i + 1,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            if let Some(rest) = comment.strip_prefix("HELP ") {
                let (name, help) = rest
                    .trim_start()
                    .split_once(' ')
                    .unwrap_or((rest.trim(), ""));
                if !valid_metric_name(name) {
                    return Err(err("invalid metric name in HELP"));
                }
                out.help.insert(name.to_owned(), unescape_help(help));
            } else if let Some(rest) = comment.strip_prefix("TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(err("TYPE needs a name and a type"));
                };
                if !valid_metric_name(name) {
                    return Err(err("invalid metric name in TYPE"));
                }
                if !matches!(
                    kind,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    return Err(err("unknown metric type"));
                }
                out.types.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        out.samples.push(parse_sample(line).map_err(err)?);
    }
    Ok(out)
}

/// The samples of the metrics `keep` accepts (by metric name, `_bucket`/`_sum`/`_count`
/// included), parsed as [`parse`] parses them; `# HELP` and `# TYPE` are skipped.
///
/// For a reader that needs a few series of a large exposition (the EPP scraping a model
/// server's ~30 KB `/metrics` 20 times a second): every line is still checked to be blank, a
/// comment or a sample (a valid metric name, a label set, a value, an optional timestamp), so
/// text that is not an exposition (an HTML page, a JSON error) is refused; but only kept
/// samples have their labels parsed (names checked, values unescaped and stored), so a bad
/// label name or escape in another metric goes unnoticed.
pub fn parse_samples_of(
    text: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let err = |reason| ParseError {
            line: i + 1,
            reason,
        };
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name = &line[..sample_name_end(line)];
        if !valid_metric_name(name) {
            return Err(err("invalid metric name"));
        }
        if keep(name) {
            out.push(parse_sample(line).map_err(err)?);
        } else {
            check_sample_shape(&line[name.len()..]).map_err(err)?;
        }
    }
    Ok(out)
}

/// Checks, without allocating, that what follows a sample's name is a label set (braces,
/// quoted values with escapes; names not checked), a value and an optional timestamp.
fn check_sample_shape(rest: &str) -> Result<(), &'static str> {
    let mut rest = rest;
    if let Some(labels) = rest.strip_prefix('{') {
        let bytes = labels.as_bytes();
        let mut i = 0;
        let mut quoted = false;
        let end = loop {
            match (bytes.get(i), quoted) {
                (None, _) => return Err("unterminated label set"),
                (Some(b'\\'), true) => i += 1,
                (Some(b'"'), q) => quoted = !q,
                (Some(b'}'), false) => break i,
                _ => {}
            }
            i += 1;
        };
        rest = &labels[end + 1..];
    }
    value_and_timestamp(rest).map(|_| ())
}

/// The value and optional timestamp after a sample's name and labels, and nothing more.
fn value_and_timestamp(rest: &str) -> Result<(f64, Option<i64>), &'static str> {
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("missing value")?).ok_or("invalid value")?;
    let timestamp_ms = match fields.next() {
        Some(ts) => Some(ts.parse::<i64>().map_err(|_| "invalid timestamp")?),
        None => None,
    };
    if fields.next().is_some() {
        return Err("trailing data after timestamp");
    }
    Ok((value, timestamp_ms))
}

/// Where a sample line's metric name ends.
fn sample_name_end(line: &str) -> usize {
    line.find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len())
}

fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = sample_name_end(line);
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err("invalid metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after_brace)?;
        labels = parsed;
        rest = remaining;
    }
    let (value, timestamp_ms) = value_and_timestamp(rest)?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Label pairs of one sample.
type Labels = Vec<(String, String)>;

/// Parses `name="value",...}` (after the `{`); returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let name = s[..eq].trim();
        if !valid_label_name(name) {
            return Err("invalid label name");
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    _ => return Err("invalid escape in label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_owned(), value));
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after label value");
        }
    }
}

/// Parses a sample value: a float, `+Inf`, `-Inf` or `NaN`.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = r#"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.52
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
odd{path="a\"b\\c\nd",} NaN 1700000000000
"#;

    #[test]
    fn parses_vllm_names_histograms_and_escapes() {
        let e = parse(VLLM).unwrap();
        assert_eq!(
            e.value("vllm:num_requests_waiting", &[("engine", "0")]),
            Some(3.0)
        );
        assert_eq!(e.types["vllm:time_to_first_token_seconds"], "histogram");
        assert_eq!(
            e.help["vllm:num_requests_waiting"],
            "Number of requests waiting to be processed."
        );
        assert_eq!(
            e.buckets("vllm:time_to_first_token_seconds", &[("model_name", "m")]),
            vec![(0.001, 0.0), (f64::INFINITY, 4.0)]
        );
        let odd = e.find("odd", &[]).next().unwrap();
        assert_eq!(odd.label("path"), Some("a\"b\\c\nd"));
        assert!(odd.value.is_nan());
        assert_eq!(odd.timestamp_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        for (text, line) in [
            ("ok 1\n1bad 2", 2),
            ("m{a=\"x} 1", 1),
            ("m{a=x} 1", 1),
            ("m{a=\"x\" b=\"y\"} 1", 1),
            ("m 1 2 3", 1),
            ("m one", 1),
            ("m", 1),
            ("# TYPE m gauge extra", 1),
            ("# TYPE m lemon", 1),
            ("m{9a=\"x\"} 1", 1),
            ("m{a=\"\\q\"} 1", 1),
        ] {
            assert_eq!(parse(text).map_err(|e| e.line), Err(line), "{text:?}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let alphabet = b"m_:{}=\",\\ n#\t0123456789.+-eInfNa\n";
        for _ in 0..20_000 {
            let len = (seed % 40) as usize;
            let text: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize] as char
                })
                .collect();
            // The scrape's partial read accepts whatever the full parse accepts, with the
            // same samples for the names it keeps.
            let keep = |n: &str| n.starts_with('m');
            let some = parse_samples_of(&text, keep);
            if let Ok(full) = parse(&text) {
                let kept: Vec<Sample> =
                    full.samples.into_iter().filter(|s| keep(&s.name)).collect();
                assert_eq!(
                    format!("{:?}", some.unwrap()),
                    format!("{kept:?}"),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn parse_samples_of_keeps_what_the_full_parse_finds_for_those_names() {
        let keep = |n: &str| n == "vllm:num_requests_waiting" || n == "odd";
        let full: Vec<Sample> = parse(VLLM)
            .unwrap()
            .samples
            .into_iter()
            .filter(|s| keep(&s.name))
            .collect();
        let some = parse_samples_of(VLLM, keep).unwrap();
        assert_eq!(format!("{some:?}"), format!("{full:?}")); // NaN != NaN, so compare as text
        assert_eq!(some.len(), 2);
        assert!(parse_samples_of(VLLM, |_| false).unwrap().is_empty());
    }

    #[test]
    fn parse_samples_of_refuses_what_is_not_an_exposition() {
        for (text, line) in [
            ("<html><body>not found</body></html>\n", 1),
            ("ok 1\n{\"error\": \"no metrics\"}\n", 2),
            ("ok 1\n9bad 1\n", 2),
        ] {
            assert_eq!(
                parse_samples_of(text, |_| false).unwrap_err().line,
                line,
                "{text}"
            );
        }
        // Every sample's shape is checked: label braces and quotes, value, timestamp.
        for (text, reason) in [
            ("other{a=\"1\"} x\n", "invalid value"),
            ("garbage line here\n", "invalid value"),
            ("other{a=\"}\" 1\n", "unterminated label set"),
            ("other 1 2 3\n", "trailing data after timestamp"),
            ("other 1 now\n", "invalid timestamp"),
            ("other{}\n", "missing value"),
        ] {
            let e = parse_samples_of(text, |_| false).unwrap_err();
            assert_eq!(e, ParseError { line: 1, reason }, "{text}");
            assert!(parse(text).is_err(), "{text}");
        }
        // A label value holding braces, quotes and escapes is skipped correctly.
        assert!(parse_samples_of("o{a=\"}{\\\"\\\\\",b=\"x\"} 1 5\n", |_| false).is_ok());
        // A kept sample is parsed in full; another metric's label names are not checked.
        let text = "kept{a=\"1\"} 1\nother{9=\"1\"} 2\n";
        assert_eq!(parse_samples_of(text, |n| n == "kept").unwrap().len(), 1);
        assert_eq!(
            parse_samples_of(text, |n| n == "other").unwrap_err(),
            ParseError {
                line: 2,
                reason: "invalid label name"
            }
        );
    }
}
