//! `llmd demo --html FILE`, and the page `--keep-running` serves: what the demo measured, drawn.
//!
//! - Part 1: precise prefix-cache routing against random routing: hit rates, the client's TTFT
//!   distribution, requests per pod and the EPP's matched-blocks histogram.
//! - Part 2: the true-TTFT breakdown over time (prefill leg + coordinator overhead + decode TTFT,
//!   stacked, from each `llm_d.pd_proxy.request` span) next to the TTFT the decode engine
//!   reports (its `llm_request` span), the coordinator overhead on its own scale, and the NIXL
//!   transfer time and size distributions (the decode engine's `vllm:nixl_*` histograms).
//! - A trace explorer: the waterfall of a few requests (the slowest and the median P/D request
//!   by true TTFT, a decode-only one, one of part 1's), each span clickable for its attributes.
//!
//! One self-contained file: inline SVG drawn here, a few lines of vanilla JavaScript for the
//! explorer (each span's attributes are in an inert `<template>`), no network. The charts are
//! drawn as the load generator's report draws them (`llmd_loadgen::html`), for the same reason:
//! a few rectangles and polylines do not justify a plotting crate.

use std::collections::HashMap;
use std::fmt::Write as _;

use llmd_telemetry::names::{self, attrs as a};
use llmd_telemetry::testing::Received;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use super::trace::{PdPoint, pd_points};
use llmd_loadgen::html::{esc, nice_step};

/// What one part 1 run measured, for the page.
#[derive(Debug, Clone, Default)]
pub(super) struct RunFigures {
    /// Counted requests, and of them succeeded.
    pub requests: u64,
    pub ok: u64,
    /// Prompt tokens the engines found cached / prompt tokens.
    pub engine_hit_rate: f64,
    /// Prompt tokens the responses' usage reported cached / prompt tokens.
    pub cached_share: f64,
    /// Requests sent to a pod holding at least one of their blocks / scored requests.
    pub epp_hit_rate: f64,
    /// Successful requests per pod.
    pub per_pod: Vec<f64>,
    /// The EPP's matched-blocks histogram: (upper bound, requests in the bucket).
    pub matched: Vec<(f64, f64)>,
    /// The client's TTFT of every successful request, ms.
    pub ttft_ms: Vec<f64>,
    /// The client's TTFT percentiles (p50, p90, p99), ms, as the summary prints them.
    pub ttft_p: [f64; 3],
}

/// Part 1: the two runs.
#[derive(Debug, Clone, Default)]
pub(super) struct PrefixFigures {
    pub precise: RunFigures,
    pub random: RunFigures,
    /// When the first run started (RFC 3339).
    pub started_at: String,
}

/// What part 2 measured from metrics, for the page (the rest comes from the spans).
#[derive(Debug, Clone, Default)]
pub(super) struct PdFigures {
    pub requests: u64,
    pub ok: u64,
    pub pd_decisions: f64,
    pub decode_only: f64,
    pub threshold: u32,
    /// Rank-transfers the decode engine counted.
    pub transfers: f64,
    /// `vllm:nixl_xfer_time_seconds` of the decode engine: (upper bound s, transfers).
    pub xfer_time: Vec<(f64, f64)>,
    /// `vllm:nixl_bytes_transferred` of the decode engine: (upper bound bytes, transfers).
    pub xfer_bytes: Vec<(f64, f64)>,
    pub xfer_time_mean_ms: Option<f64>,
    pub xfer_bytes_mean: Option<f64>,
    /// When the run started (RFC 3339).
    pub started_at: String,
}

/// Everything the page draws that is not in the spans.
#[derive(Debug, Clone, Default)]
pub(super) struct Figures {
    pub prefix: Option<PrefixFigures>,
    pub pd: Option<PdFigures>,
    /// Whether the page is served live (--keep-running) rather than written once.
    pub live: bool,
}

const PRECISE: &str = "#4e79a7";
const RANDOM: &str = "#e15759";
const PREFILL: &str = "#4e79a7";
const COORDINATOR: &str = "#f28e2b";
const DECODE: &str = "#59a14f";
const ENGINE: &str = "#b0283f";

fn num(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.round() {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.1}")
    } else if x.abs() >= 0.01 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

fn bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// Nearest-rank quantile of unsorted samples (NaN when empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

const W: f64 = 560.0;
const H: f64 = 300.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 52.0;
const BOTTOM: f64 = 46.0;

/// A chart's plot area and scales.
struct Frame {
    x0: f64,
    x1: f64,
    y1: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        LEFT + (v - self.x0) / (self.x1 - self.x0).max(1e-12) * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - v / self.y1.max(1e-12) * (H - TOP - BOTTOM)
    }
}

/// Opens a chart: the `<svg>` with its id, title and subtitle.
fn open(id: &str, title: &str, subtitle: &str) -> String {
    format!(
        r##"<svg class="chart" id="{id}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><text x="12" y="20" class="title">{t}</text><text x="12" y="36" class="sub">{s}</text>"##,
        t = esc(title),
        s = esc(subtitle),
    )
}

/// The y axis: grid lines, tick labels and the axis label, from 0 to `f.y1`.
fn y_axis(s: &mut String, f: &Frame, label: &str, fmt: &dyn Fn(f64) -> String) {
    let step = nice_step(f.y1);
    let mut t = 0.0;
    while t <= f.y1 * (1.0 + 1e-9) {
        let y = f.y(t);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" class="grid"/><text x="{}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            esc(&fmt(t))
        );
        t += step;
    }
    let mid = TOP + (H - TOP - BOTTOM) / 2.0;
    let _ = write!(
        s,
        r##"<text x="14" y="{mid:.1}" text-anchor="middle" class="axis" transform="rotate(-90 14 {mid:.1})">{}</text><line x1="{LEFT}" y1="{b}" x2="{}" y2="{b}" class="base"/>"##,
        esc(label),
        W - RIGHT,
        b = H - BOTTOM,
    );
}

/// A numeric x axis with ticks from `f.x0` to `f.x1`.
fn x_axis(s: &mut String, f: &Frame, label: &str) {
    let step = nice_step(f.x1 - f.x0);
    let mut t = (f.x0 / step).ceil() * step;
    while t <= f.x1 + 1e-9 {
        let x = f.x(t);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{b}" x2="{x:.1}" y2="{}" class="base"/><text x="{x:.1}" y="{}" text-anchor="middle" class="tick">{}</text>"##,
            H - BOTTOM + 4.0,
            H - BOTTOM + 16.0,
            num(t),
            b = H - BOTTOM,
        );
        t += step;
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{}" text-anchor="middle" class="axis">{}</text>"##,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 8.0,
        esc(label)
    );
}

/// A legend in one row above the plot area.
fn legend(s: &mut String, items: &[(&str, &str)]) {
    let mut x = LEFT;
    for (name, color) in items {
        let _ = write!(
            s,
            r##"<rect x="{x:.1}" y="{}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{}" class="tick">{}</text>"##,
            TOP - 12.0,
            x + 14.0,
            TOP - 3.0,
            esc(name)
        );
        x += 24.0 + 6.5 * name.chars().count() as f64;
    }
}

/// A placeholder where a chart has nothing to draw.
fn empty(id: &str, title: &str, why: &str) -> String {
    let mut s = open(id, title, "");
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" class="sub">{}</text></svg>"##,
        W / 2.0,
        H / 2.0,
        esc(why)
    );
    s
}

/// One series of a bar chart: name, colour, one value per category.
type Bars<'a> = (&'a str, &'a str, Vec<f64>);

/// Grouped bars: one group per category, one bar per series, each labelled with its value.
fn grouped_bars(
    id: &str,
    title: &str,
    subtitle: &str,
    y_label: &str,
    categories: &[String],
    series: &[Bars<'_>],
    fmt: &dyn Fn(f64) -> String,
) -> String {
    let top = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    if categories.is_empty() || series.is_empty() {
        return empty(id, title, "nothing measured");
    }
    let f = Frame {
        x0: 0.0,
        x1: categories.len() as f64,
        y1: if top > 0.0 { top * 1.15 } else { 1.0 },
    };
    let mut s = open(id, title, subtitle);
    y_axis(&mut s, &f, y_label, fmt);
    if series.len() > 1 {
        legend(
            &mut s,
            &series.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        );
    }
    let group = f.x(1.0) - f.x(0.0);
    let bar = (group * 0.8 / series.len() as f64).min(48.0);
    let label_every = if categories.len() > 12 { 2 } else { 1 };
    for (i, cat) in categories.iter().enumerate() {
        let left = f.x(i as f64) + (group - bar * series.len() as f64) / 2.0;
        for (j, (name, color, values)) in series.iter().enumerate() {
            let v = values.get(i).copied().unwrap_or(0.0);
            let v = if v.is_finite() { v } else { 0.0 };
            let x = left + bar * j as f64;
            let y = f.y(v);
            let _ = write!(
                s,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {} {}</title></rect>"##,
                (bar - 2.0).max(1.0),
                (f.y(0.0) - y).max(0.0),
                esc(name),
                esc(cat),
                esc(&fmt(v))
            );
            if bar >= 22.0 {
                let _ = write!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="val">{}</text>"##,
                    x + bar / 2.0 - 1.0,
                    y - 4.0,
                    esc(&fmt(v))
                );
            }
        }
        if i % label_every == 0 {
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" class="tick">{}</text>"##,
                f.x(i as f64 + 0.5),
                H - BOTTOM + 16.0,
                esc(cat)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Histograms of several samples on the same bins (translucent, overlaid), each with its
/// median marked.
fn overlaid_histograms(
    id: &str,
    title: &str,
    subtitle: &str,
    x_label: &str,
    series: &[(&str, &str, &[f64])],
) -> String {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|x| x.is_finite())
        .collect();
    if all.is_empty() {
        return empty(id, title, "no successful request");
    }
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.0);
    let hi = quantile(&all, 0.995).max(lo + 1e-6);
    const BINS: usize = 40;
    let width = (hi - lo) / BINS as f64;
    let counts: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, _, v)| {
            let mut c = vec![0.0; BINS];
            for x in v.iter().filter(|x| x.is_finite()) {
                let i = (((x - lo) / width).max(0.0) as usize).min(BINS - 1);
                c[i] += 1.0;
            }
            c
        })
        .collect();
    let top = counts.iter().flatten().copied().fold(1.0f64, f64::max);
    let f = Frame {
        x0: lo,
        x1: hi,
        y1: top * 1.1,
    };
    let mut s = open(id, title, subtitle);
    y_axis(&mut s, &f, "requests", &|v| num(v));
    x_axis(&mut s, &f, x_label);
    legend(
        &mut s,
        &series.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
    );
    for (k, ((name, color, v), c)) in series.iter().zip(&counts).enumerate() {
        for (i, n) in c.iter().enumerate().filter(|(_, n)| **n > 0.0) {
            let (x0, x1) = (f.x(lo + width * i as f64), f.x(lo + width * (i + 1) as f64));
            let y = f.y(*n);
            let _ = write!(
                s,
                r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}" fill-opacity="0.55"><title>{}: {n} requests at {}-{} ms</title></rect>"##,
                (x1 - x0 - 0.5).max(0.5),
                (f.y(0.0) - y).max(0.0),
                esc(name),
                num(lo + width * i as f64),
                num(lo + width * (i + 1) as f64),
            );
        }
        let p50 = quantile(v, 0.5);
        if p50.is_finite() {
            let x = f.x(p50.min(hi));
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="{color}" stroke-width="1.5" stroke-dasharray="5 3"/><text x="{:.1}" y="{}" fill="{color}" class="tick">p50 {} ms</text>"##,
                H - BOTTOM,
                x + 3.0,
                TOP + 10.0 + 12.0 * k as f64,
                num(p50)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A histogram's buckets as bars labelled by their bounds (`fmt` formats a bound), without
/// the empty buckets at either end.
fn bucket_bars(
    id: &str,
    title: &str,
    subtitle: &str,
    buckets: &[(f64, f64)],
    fmt: &dyn Fn(f64) -> String,
    color: &str,
) -> String {
    let first = buckets.iter().position(|b| b.1 > 0.0);
    let last = buckets.iter().rposition(|b| b.1 > 0.0);
    let (Some(first), Some(last)) = (first, last) else {
        return empty(id, title, "no transfer recorded");
    };
    let mut categories = Vec::new();
    let mut values = Vec::new();
    for i in first..=last {
        let (le, n) = buckets[i];
        let lower = if i > 0 { Some(buckets[i - 1].0) } else { None };
        categories.push(match (lower, le.is_finite()) {
            (Some(l), false) => format!("> {}", fmt(l)),
            (Some(l), true) => format!("{}-{}", fmt(l), fmt(le)),
            (None, _) => format!("≤ {}", fmt(le)),
        });
        values.push(n);
    }
    grouped_bars(
        id,
        title,
        subtitle,
        "transfers",
        &categories,
        &[("transfers", color, values)],
        &|v| num(v),
    )
}

/// The matched-blocks buckets relabelled as block counts (0, 1, 2, 3-4, ...).
fn matched_categories(buckets: &[(f64, f64)]) -> Vec<String> {
    let mut prev: Option<f64> = None;
    buckets
        .iter()
        .map(|(le, _)| {
            let label = match prev {
                None => num(*le),
                Some(p) if !le.is_finite() => format!("> {}", num(p)),
                Some(p) if *le - p <= 1.0 => num(*le),
                Some(p) => format!("{}-{}", num(p + 1.0), num(*le)),
            };
            prev = Some(*le);
            label
        })
        .collect()
}

/// Part 1's four charts.
fn prefix_charts(p: &PrefixFigures) -> String {
    let (a, b) = (&p.precise, &p.random);
    let mut out = String::new();
    out.push_str(&grouped_bars(
        "p1-hit-rate",
        "Prefix-cache hit rate",
        "engines' cached prompt tokens, the responses' usage, and the EPP's routing",
        "share",
        &[
            "engines' hit rate".to_owned(),
            "cached tokens (usage)".to_owned(),
            "EPP: pod with blocks".to_owned(),
        ],
        &[
            (
                "precise",
                PRECISE,
                vec![a.engine_hit_rate, a.cached_share, a.epp_hit_rate],
            ),
            (
                "random",
                RANDOM,
                vec![b.engine_hit_rate, b.cached_share, b.epp_hit_rate],
            ),
        ],
        &pct,
    ));
    out.push_str(&overlaid_histograms(
        "p1-ttft",
        "Time to first token, as the client saw it",
        &format!(
            "p50 / p90 / p99: precise {} / {} / {} ms, random {} / {} / {} ms",
            num(a.ttft_p[0]),
            num(a.ttft_p[1]),
            num(a.ttft_p[2]),
            num(b.ttft_p[0]),
            num(b.ttft_p[1]),
            num(b.ttft_p[2])
        ),
        "TTFT (ms)",
        &[
            ("precise", PRECISE, &a.ttft_ms),
            ("random", RANDOM, &b.ttft_ms),
        ],
    ));
    let pods = a.per_pod.len().max(b.per_pod.len());
    out.push_str(&grouped_bars(
        "p1-per-pod",
        "Requests per pod",
        "successful requests each engine served (random routing ran on four fresh pods)",
        "requests",
        &(1..=pods).map(|i| format!("pod {i}")).collect::<Vec<_>>(),
        &[
            ("precise", PRECISE, a.per_pod.clone()),
            ("random", RANDOM, b.per_pod.clone()),
        ],
        &|v| num(v),
    ));
    // Both runs' histograms share the EPP's buckets; drop the empty ones past the longest match.
    let used = a
        .matched
        .iter()
        .zip(&b.matched)
        .rposition(|(x, y)| x.1 > 0.0 || y.1 > 0.0)
        .map_or(0, |i| i + 1);
    let share = |r: &RunFigures| {
        let total: f64 = r.matched.iter().map(|m| m.1).sum();
        r.matched[..used.min(r.matched.len())]
            .iter()
            .map(|m| if total > 0.0 { m.1 / total } else { 0.0 })
            .collect::<Vec<_>>()
    };
    out.push_str(&grouped_bars(
        "p1-matched",
        "Matched prefix blocks of the chosen pod",
        "the EPP's histogram: consecutive 64-token blocks from block 0, per scored request",
        "share of requests",
        &matched_categories(&a.matched[..used.min(a.matched.len())]),
        &[("precise", PRECISE, share(a)), ("random", RANDOM, share(b))],
        &pct,
    ));
    out
}

/// Per-time-bin means of the P/D points.
struct Bin {
    t0: f64,
    t1: f64,
    n: usize,
    prefill: f64,
    overhead: f64,
    decode: f64,
    engine: Option<f64>,
}

fn bins(points: &[PdPoint]) -> Vec<Bin> {
    let Some(t0) = points.iter().map(|p| p.start_unix_nano).min() else {
        return Vec::new();
    };
    let at = |p: &PdPoint| p.start_unix_nano.saturating_sub(t0) as f64 / 1e9;
    let span = points.iter().map(at).fold(0.0f64, f64::max);
    // About 20 to 50 bars whatever the run's length (a short run's requests start within a
    // second or two; a long --keep-running spans hours), at least 50 ms each.
    let width = nice_step(span / 5.0).max(0.05);
    let n = (span / width).floor() as usize + 1;
    let mut sums = vec![(0usize, 0.0, 0.0, 0.0, 0usize, 0.0); n];
    for p in points {
        let b = &mut sums[((at(p) / width) as usize).min(n - 1)];
        b.0 += 1;
        b.1 += p.prefill;
        b.2 += p.overhead;
        b.3 += p.decode_ttft;
        if let Some(e) = p.engine_ttft {
            b.4 += 1;
            b.5 += e;
        }
    }
    sums.into_iter()
        .enumerate()
        .filter(|(_, b)| b.0 > 0)
        .map(|(i, (k, p, o, d, ke, e))| Bin {
            t0: i as f64 * width,
            t1: (i + 1) as f64 * width,
            n: k,
            prefill: p / k as f64,
            overhead: o / k as f64,
            decode: d / k as f64,
            engine: (ke > 0).then(|| e / ke as f64),
        })
        .collect()
}

/// The true-TTFT breakdown over time, stacked, with the decode engine's TTFT as a line.
fn breakdown_chart(points: &[PdPoint]) -> String {
    let id = "p2-breakdown";
    let title = "True TTFT over time: prefill + coordinator + decode TTFT";
    let bins = bins(points);
    if bins.is_empty() {
        return empty(id, title, "no complete P/D request trace");
    }
    let top = bins
        .iter()
        .map(|b| (b.prefill + b.overhead + b.decode).max(b.engine.unwrap_or(0.0)))
        .fold(0.0f64, f64::max);
    let f = Frame {
        x0: 0.0,
        x1: bins.last().map_or(1.0, |b| b.t1),
        y1: top * 1.12,
    };
    let true_p50 = quantile(&points.iter().map(|p| p.true_ttft).collect::<Vec<_>>(), 0.5);
    let engine_p50 = quantile(
        &points
            .iter()
            .filter_map(|p| p.engine_ttft)
            .collect::<Vec<_>>(),
        0.5,
    );
    let mut s = open(
        id,
        title,
        &format!(
            "{} P/D requests by arrival, mean per {} s; p50: true TTFT {} ms, decode engine's {} ms",
            points.len(),
            num(bins[0].t1 - bins[0].t0),
            num(true_p50),
            num(engine_p50)
        ),
    );
    y_axis(&mut s, &f, "ms", &|v| num(v));
    x_axis(&mut s, &f, "seconds since the first P/D request");
    legend(
        &mut s,
        &[
            ("prefill leg", PREFILL),
            ("coordinator", COORDINATOR),
            ("decode TTFT", DECODE),
            ("decode engine's TTFT", ENGINE),
        ],
    );
    for b in &bins {
        let (x0, x1) = (f.x(b.t0), f.x(b.t1));
        let mut base = 0.0;
        for (v, color, name) in [
            (b.prefill, PREFILL, "prefill leg"),
            (b.overhead, COORDINATOR, "coordinator overhead"),
            (b.decode, DECODE, "decode TTFT"),
        ] {
            let (y_top, y_bottom) = (f.y(base + v), f.y(base));
            let _ = write!(
                s,
                r##"<rect x="{x0:.1}" y="{y_top:.2}" width="{:.1}" height="{:.2}" fill="{color}"><title>{}-{} s, {} requests: {name} {} ms</title></rect>"##,
                (x1 - x0 - 1.0).max(0.5),
                (y_bottom - y_top).max(0.0),
                num(b.t0),
                num(b.t1),
                b.n,
                num(v)
            );
            base += v;
        }
    }
    let line: Vec<String> = bins
        .iter()
        .filter_map(|b| {
            b.engine
                .map(|e| format!("{:.1},{:.1}", f.x((b.t0 + b.t1) / 2.0), f.y(e)))
        })
        .collect();
    let _ = write!(
        s,
        r##"<polyline fill="none" stroke="{ENGINE}" stroke-width="2" points="{}"/>"##,
        line.join(" ")
    );
    for b in &bins {
        if let Some(e) = b.engine {
            let _ = write!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{ENGINE}"><title>the decode engine's TTFT {} ms</title></circle>"##,
                f.x((b.t0 + b.t1) / 2.0),
                f.y(e),
                num(e)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The coordinator overhead over time, on its own scale (too thin to see in the stack).
fn overhead_chart(points: &[PdPoint]) -> String {
    let id = "p2-overhead";
    let title = "Coordinator overhead over time (the proxy's own time)";
    let bins = bins(points);
    if bins.is_empty() {
        return empty(id, title, "no complete P/D request trace");
    }
    let o: Vec<f64> = points.iter().map(|p| p.overhead).collect();
    let top = bins.iter().map(|b| b.overhead).fold(0.0f64, f64::max);
    let f = Frame {
        x0: 0.0,
        x1: bins.last().map_or(1.0, |b| b.t1),
        y1: if top > 0.0 { top * 1.2 } else { 1.0 },
    };
    let mut s = open(
        id,
        title,
        &format!(
            "mean per bin; per request p50 {} ms, p99 {} ms",
            num(quantile(&o, 0.5)),
            num(quantile(&o, 0.99))
        ),
    );
    y_axis(&mut s, &f, "ms", &|v| num(v));
    x_axis(&mut s, &f, "seconds since the first P/D request");
    for b in &bins {
        let (x0, x1) = (f.x(b.t0), f.x(b.t1));
        let y = f.y(b.overhead);
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{y:.2}" width="{:.1}" height="{:.2}" fill="{COORDINATOR}"><title>{}-{} s: {} ms</title></rect>"##,
            (x1 - x0 - 1.0).max(0.5),
            (f.y(0.0) - y).max(0.0),
            num(b.t0),
            num(b.t1),
            num(b.overhead)
        );
    }
    s.push_str("</svg>");
    s
}

fn pd_charts(p: Option<&PdFigures>, points: &[PdPoint]) -> String {
    let mut out = String::new();
    out.push_str(&breakdown_chart(points));
    out.push_str(&overhead_chart(points));
    let Some(p) = p else {
        return out;
    };
    out.push_str(&bucket_bars(
        "p2-nixl-time",
        "NIXL transfer time (ms)",
        &format!(
            "vllm:nixl_xfer_time_seconds of the decode engine: {} rank-transfers, mean {} ms",
            num(p.transfers),
            p.xfer_time_mean_ms.map_or_else(|| "-".to_owned(), num)
        ),
        &p.xfer_time,
        &|s| num(s * 1e3),
        PREFILL,
    ));
    out.push_str(&bucket_bars(
        "p2-nixl-size",
        "NIXL transfer size",
        &format!(
            "vllm:nixl_bytes_transferred per rank-transfer (TP=2), mean {}",
            p.xfer_bytes_mean.map_or_else(|| "-".to_owned(), bytes)
        ),
        &p.xfer_bytes,
        &bytes,
        DECODE,
    ));
    out
}

/// The spans of a trace in waterfall order (depth first, children by start), with depths.
fn tree_order<'a>(spans: &[&'a Received]) -> Vec<(&'a Received, usize)> {
    let ids: std::collections::HashSet<&[u8]> =
        spans.iter().map(|s| s.span.span_id.as_slice()).collect();
    let mut children: HashMap<&[u8], Vec<&'a Received>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        if ids.contains(s.span.parent_span_id.as_slice()) {
            children
                .entry(s.span.parent_span_id.as_slice())
                .or_default()
                .push(s);
        } else {
            roots.push(*s);
        }
    }
    let mut out = Vec::new();
    roots.sort_by_key(|s| std::cmp::Reverse(s.span.start_time_unix_nano));
    let mut stack: Vec<(&Received, usize)> = roots.into_iter().map(|s| (s, 0)).collect();
    while let Some((s, depth)) = stack.pop() {
        out.push((s, depth));
        let mut kids = children
            .remove(s.span.span_id.as_slice())
            .unwrap_or_default();
        kids.sort_by_key(|k| std::cmp::Reverse(k.span.start_time_unix_nano));
        stack.extend(kids.into_iter().map(|k| (k, depth + 1)));
    }
    out
}

fn service_color(service: &str) -> &'static str {
    match service {
        names::services::LOADGEN => "#8c8c8c",
        names::services::GATEWAY => "#b07aa1",
        names::services::SCHEDULER => "#f28e2b",
        names::services::PD_PROXY => "#4e79a7",
        names::services::VLLM_PREFILL => "#76b7b2",
        names::services::VLLM_DECODE | names::services::VLLM => "#59a14f",
        _ => "#bab0ab",
    }
}

/// An attribute value as text, and its OTLP type.
fn value_text(v: Option<&Value>) -> (String, &'static str) {
    match v {
        Some(Value::StringValue(s)) => (s.clone(), "string"),
        Some(Value::IntValue(i)) => (i.to_string(), "int"),
        Some(Value::DoubleValue(d)) => (d.to_string(), "double"),
        Some(Value::BoolValue(b)) => (b.to_string(), "bool"),
        Some(Value::ArrayValue(a)) => (
            a.values
                .iter()
                .map(|v| value_text(v.value.as_ref()).0)
                .collect::<Vec<_>>()
                .join(", "),
            "array",
        ),
        Some(other) => (format!("{other:?}"), "other"),
        None => (String::new(), "empty"),
    }
}

/// Attributes worth the reader's eye first.
fn is_key_attribute(key: &str) -> bool {
    [
        a::EPP_DECISION,
        a::EPP_CACHE_HIT_RATIO,
        a::EPP_PD_THRESHOLD,
        a::EPP_USER_INPUT_BYTES,
        a::PD_TRUE_TTFT_MS,
        a::PD_PREFILL_DURATION_MS,
        a::PD_COORDINATOR_OVERHEAD_MS,
        a::PD_COORDINATOR_TTFT_MS,
        a::PD_DECODE_TTFT_MS,
        a::GEN_AI_LATENCY_TTFT,
    ]
    .contains(&key)
}

/// One span's attributes, as the table the explorer shows when it is clicked.
fn span_details(s: &Received, t0: u64) -> String {
    let mut out = String::new();
    let span = &s.span;
    let _ = write!(
        out,
        "<h3>{}</h3><table class=\"attrs\"><tr><th>service.name</th><td>{}</td><td class=\"ty\">resource</td></tr>\
         <tr><th>start</th><td>+{:.3} ms</td><td class=\"ty\"></td></tr>\
         <tr><th>duration</th><td>{:.3} ms</td><td class=\"ty\"></td></tr>\
         <tr><th>span id</th><td><code>{}</code></td><td class=\"ty\"></td></tr>\
         <tr><th>parent</th><td><code>{}</code></td><td class=\"ty\"></td></tr>\
         <tr><th>trace id</th><td><code>{}</code></td><td class=\"ty\"></td></tr>",
        esc(&span.name),
        esc(&s.service_name),
        span.start_time_unix_nano.saturating_sub(t0) as f64 / 1e6,
        span.end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano) as f64
            / 1e6,
        s.span_id_hex(),
        s.parent_id_hex(),
        s.trace_id_hex(),
    );
    if let Some(status) = &span.status
        && status.code != 0
    {
        let _ = write!(
            out,
            "<tr><th>status</th><td>{} {}</td><td class=\"ty\"></td></tr>",
            if status.code == 2 { "error" } else { "ok" },
            esc(&status.message)
        );
    }
    let mut attrs: Vec<_> = span.attributes.iter().collect();
    attrs.sort_by_key(|kv| (!is_key_attribute(&kv.key), kv.key.clone()));
    for kv in attrs {
        let (text, ty) = value_text(kv.value.as_ref().and_then(|v| v.value.as_ref()));
        let _ = write!(
            out,
            "<tr{}><th>{}</th><td>{}</td><td class=\"ty\">{ty}</td></tr>",
            if is_key_attribute(&kv.key) {
                " class=\"key\""
            } else {
                ""
            },
            esc(&kv.key),
            esc(&text)
        );
    }
    out.push_str("</table>");
    out
}

/// One trace's waterfall (clickable spans) and its spans' attribute templates.
fn waterfall(index: usize, spans: &[&Received]) -> String {
    const WW: f64 = 1000.0;
    const LABEL: f64 = 330.0;
    const BAR_END: f64 = 900.0;
    const ROW: f64 = 32.0;
    const HEAD: f64 = 26.0;
    let rows = tree_order(spans);
    let t0 = spans
        .iter()
        .map(|s| s.span.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| s.span.end_time_unix_nano)
        .max()
        .unwrap_or(t0);
    let total_ms = (t1.saturating_sub(t0) as f64 / 1e6).max(1e-3);
    let x = |ns: u64| LABEL + (ns.saturating_sub(t0) as f64 / 1e6) / total_ms * (BAR_END - LABEL);
    let height = HEAD + ROW * rows.len() as f64 + 6.0;
    let mut s = format!(
        r##"<svg class="waterfall" xmlns="http://www.w3.org/2000/svg" width="{WW}" height="{height}" viewBox="0 0 {WW} {height}">"##
    );
    let step = nice_step(total_ms);
    let mut t = 0.0;
    while t <= total_ms + 1e-9 {
        let px = LABEL + t / total_ms * (BAR_END - LABEL);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{height}" class="grid"/><text x="{px:.1}" y="14" text-anchor="middle" class="tick">{} ms</text>"##,
            HEAD - 6.0,
            num(t)
        );
        t += step;
    }
    let mut templates = String::new();
    for (j, (span, depth)) in rows.iter().enumerate() {
        let y = HEAD + ROW * j as f64;
        let (a, b) = (
            x(span.span.start_time_unix_nano),
            x(span.span.end_time_unix_nano),
        );
        let dur = span
            .span
            .end_time_unix_nano
            .saturating_sub(span.span.start_time_unix_nano) as f64
            / 1e6;
        let color = service_color(&span.service_name);
        let indent = 8.0 + 14.0 * *depth as f64;
        let _ = write!(
            s,
            r##"<g class="span" data-trace="{index}" data-span="{j}" tabindex="0" role="button" aria-label="{name}"><rect x="0" y="{y}" width="{WW}" height="{ROW}" class="row"/><text x="{indent:.1}" y="{:.1}" class="name">{name}</text><text x="{indent:.1}" y="{:.1}" class="svc">{svc}</text><rect x="{a:.1}" y="{:.1}" width="{:.1}" height="16" rx="2" fill="{color}"/><text x="{:.1}" y="{:.1}" class="tick">{} ms</text></g>"##,
            y + 14.0,
            y + 27.0,
            y + 8.0,
            (b - a).max(1.5),
            BAR_END + 8.0,
            y + 20.0,
            num(dur),
            name = esc(&span.span.name),
            svc = esc(&span.service_name),
        );
        let _ = write!(
            templates,
            r##"<template id="span-{index}-{j}">{}</template>"##,
            span_details(span, t0)
        );
    }
    s.push_str("</svg>");
    s.push_str(&templates);
    s
}

/// The traces the explorer shows: (label, spans), from the slowest P/D request to a part 1 one.
fn sample_traces(spans: &[Received]) -> Vec<(String, Vec<&Received>)> {
    let mut by_trace: HashMap<&[u8], Vec<&Received>> = HashMap::new();
    for s in spans {
        by_trace
            .entry(s.span.trace_id.as_slice())
            .or_default()
            .push(s);
    }
    let decision = |trace: &[&Received]| {
        trace
            .iter()
            .find(|s| s.span.name == names::spans::EPP_PROFILE_HANDLER_PICK)
            .and_then(|s| s.attr(a::EPP_DECISION))
    };
    fn proxy<'a>(trace: &[&'a Received]) -> Option<&'a Received> {
        trace
            .iter()
            .find(|s| s.span.name == names::spans::PD_PROXY_REQUEST)
            .copied()
    }
    let has_root = |trace: &[&Received]| {
        trace
            .iter()
            .any(|s| s.span.name == names::spans::LOADGEN_REQUEST)
    };
    // P/D requests by true TTFT; decode-only ones by the proxy's total time.
    let mut pd: Vec<(f64, &[u8])> = Vec::new();
    let mut decode_only: Vec<(f64, &[u8])> = Vec::new();
    let mut part1: Vec<(u64, &[u8])> = Vec::new();
    for (id, trace) in &by_trace {
        if !has_root(trace) {
            continue;
        }
        match (proxy(trace), decision(trace).as_deref()) {
            (Some(p), Some("prefill-decode")) => {
                if let Some(t) = p.number(a::PD_TRUE_TTFT_MS) {
                    pd.push((t, id));
                }
            }
            // The proxy passes a decode-only request through without a span of its own: by
            // the whole request's time, as the load generator saw it.
            (_, Some("decode-only")) => {
                let root = trace
                    .iter()
                    .find(|s| s.span.name == names::spans::LOADGEN_REQUEST);
                if let Some(r) = root {
                    let (s, e) = r.window();
                    decode_only.push((e.saturating_sub(s) as f64, id));
                }
            }
            (None, None)
                if trace
                    .iter()
                    .any(|s| s.span.name == names::spans::EPP_SCORER_PREFIX_CACHE) =>
            {
                let start = trace
                    .iter()
                    .map(|s| s.span.start_time_unix_nano)
                    .min()
                    .unwrap_or(0);
                part1.push((start, id));
            }
            _ => {}
        }
    }
    pd.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(y.1)));
    decode_only.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(y.1)));
    part1.sort();
    let mut out = Vec::new();
    let mut take = |label: String, id: &[u8]| {
        if let Some(trace) = by_trace.get(id) {
            out.push((label, trace.clone()));
        }
    };
    if let Some((t, id)) = pd.last() {
        take(
            format!("slowest P/D request (true TTFT {} ms)", num(*t)),
            id,
        );
    }
    if pd.len() > 1 {
        let (t, id) = pd[(pd.len() - 1) / 2];
        take(format!("median P/D request (true TTFT {} ms)", num(t)), id);
    }
    if !decode_only.is_empty() {
        let (_, id) = decode_only[(decode_only.len() - 1) / 2];
        take("a decode-only request".to_owned(), id);
    }
    // A quarter into part 1's requests: inside the precise-routing run, which comes first.
    if !part1.is_empty() {
        let (_, id) = part1[part1.len() / 4];
        take("a part 1 request (prefix-cache routing)".to_owned(), id);
    }
    out
}

fn explorer(spans: Option<&[Received]>) -> String {
    let Some(spans) = spans else {
        return "<p class=\"note\">No traces were collected in this process \
                (OTEL_EXPORTER_OTLP_ENDPOINT sends them elsewhere).</p>"
            .to_owned();
    };
    let traces = sample_traces(spans);
    if traces.is_empty() {
        return "<p class=\"note\">No complete request trace was recorded.</p>".to_owned();
    }
    let mut out = String::from("<div class=\"pick\" id=\"trace-picker\">");
    for (i, (label, _)) in traces.iter().enumerate() {
        let _ = write!(
            out,
            r#"<button type="button" data-trace="{i}">{}</button>"#,
            esc(label)
        );
    }
    out.push_str("</div><div class=\"svcs\">");
    for service in [
        names::services::LOADGEN,
        names::services::GATEWAY,
        names::services::SCHEDULER,
        names::services::PD_PROXY,
        names::services::VLLM_PREFILL,
        names::services::VLLM_DECODE,
    ] {
        let _ = write!(
            out,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            service_color(service),
            esc(service)
        );
    }
    out.push_str("</div><div class=\"explorer\"><div class=\"traces\">");
    for (i, (label, trace)) in traces.iter().enumerate() {
        let _ = write!(
            out,
            r#"<div class="trace" data-trace="{i}"><h3>{}</h3>{}</div>"#,
            esc(label),
            waterfall(i, trace)
        );
    }
    out.push_str(
        "</div><aside id=\"attrs\"><p class=\"note\">Click a span to see its attributes.</p></aside></div>",
    );
    out
}

const STYLE: &str = r#"
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#1f2d3d;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c9d3de;font-size:13px}
main{padding:8px 28px 28px;max-width:1500px}
h2{font-size:18px;margin:26px 0 4px}
p.lead{margin:0 0 12px;color:#555;font-size:13px;max-width:1100px}
.tiles{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0 4px}
.tile{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;min-width:180px}
.tile b{display:block;font-size:20px;margin-top:2px}
.tile span{font-size:12px;color:#666}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(572px,1fr));gap:14px}
svg.chart{background:#fff;border:1px solid #dde1e6;border-radius:6px;max-width:100%;height:auto}
svg text{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif}
.title{font-size:14px;font-weight:bold;fill:#222}
.sub{font-size:11px;fill:#666}
.tick{font-size:10.5px;fill:#444}
.val{font-size:10px;fill:#222}
.axis{font-size:11px;fill:#444}
.grid{stroke:#e6e8eb}
.base{stroke:#888}
.note{color:#666;font-size:13px}
.pick{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0 10px}
.pick button{font:inherit;font-size:13px;padding:6px 12px;border:1px solid #b8c0ca;border-radius:16px;background:#fff;cursor:pointer}
.pick button.on{background:#1f2d3d;color:#fff;border-color:#1f2d3d}
.svcs{display:flex;flex-wrap:wrap;gap:14px;font-size:12px;color:#555;margin:0 0 8px}
.svcs i{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}
.explorer{display:flex;gap:14px;align-items:flex-start;flex-wrap:wrap}
.traces{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:6px 10px;flex:1 1 640px;max-width:1020px}
svg.waterfall{width:100%;height:auto}
.traces h3{font-size:14px;margin:6px 0}
svg.waterfall .row{fill:transparent}
svg.waterfall g.span{cursor:pointer}
svg.waterfall g.span:hover .row{fill:#eef3f9}
svg.waterfall g.span.sel .row{fill:#dbe7f5}
svg.waterfall g.span:focus{outline:none}
svg.waterfall .name{font-size:12px;fill:#222}
svg.waterfall .svc{font-size:10.5px;fill:#777}
aside#attrs{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;flex:0 1 440px;min-width:340px;font-size:12.5px;position:sticky;top:8px}
aside#attrs h3{font-size:14px;margin:4px 0 8px;word-break:break-all}
table.attrs{border-collapse:collapse;width:100%}
table.attrs th{text-align:left;font-weight:normal;color:#555;padding:3px 8px 3px 0;vertical-align:top;word-break:break-all;width:45%}
table.attrs td{padding:3px 4px;word-break:break-all}
table.attrs td.ty{color:#999;font-size:11px;width:1%;white-space:nowrap}
table.attrs tr.key th,table.attrs tr.key td{font-weight:bold;color:#1f2d3d;background:#fff6e6}
footer{color:#777;font-size:12px;padding:0 28px 24px}
"#;

/// Shows one trace at a time and a clicked span's attributes (from its `<template>`).
const SCRIPT: &str = r#"
(function () {
  var panel = document.getElementById('attrs');
  var buttons = Array.prototype.slice.call(document.querySelectorAll('#trace-picker button'));
  var traces = Array.prototype.slice.call(document.querySelectorAll('div.trace'));
  function pick(i) {
    traces.forEach(function (t) { t.hidden = t.getAttribute('data-trace') !== i; });
    buttons.forEach(function (b) { b.classList.toggle('on', b.getAttribute('data-trace') === i); });
  }
  function show(el) {
    var tpl = document.getElementById('span-' + el.getAttribute('data-trace') + '-' + el.getAttribute('data-span'));
    if (!tpl || !panel) { return; }
    panel.textContent = '';
    panel.appendChild(tpl.content.cloneNode(true));
    document.querySelectorAll('g.span.sel').forEach(function (s) { s.classList.remove('sel'); });
    el.classList.add('sel');
  }
  buttons.forEach(function (b) { b.addEventListener('click', function () { pick(b.getAttribute('data-trace')); }); });
  document.querySelectorAll('g.span').forEach(function (el) {
    el.addEventListener('click', function () { show(el); });
    el.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); show(el); }
    });
  });
  if (buttons.length) { pick(buttons[0].getAttribute('data-trace')); }
})();
"#;

fn tile(out: &mut String, label: &str, value: &str, note: &str) {
    let _ = write!(
        out,
        "<div class=\"tile\"><span>{}</span><b>{}</b><span>{}</span></div>",
        esc(label),
        esc(value),
        esc(note)
    );
}

/// The whole page.
pub(super) fn page(fig: &Figures, spans: Option<&[Received]>) -> String {
    let points = spans.map(pd_points).unwrap_or_default();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <link rel=\"icon\" href=\"data:,\"><title>llmd demo</title><style>{STYLE}</style></head><body>\
         <header><h1>llmd demo</h1><p>Every figure below was measured by this run of <code>llmd demo</code> \
         (started {}), in this one process on loopback ports: the engines' and the EPP's metrics, \
         the load generator's clock, and the spans every component exported.{}</p></header><main>",
        esc(fig
            .prefix
            .as_ref()
            .map(|p| p.started_at.as_str())
            .or(fig.pd.as_ref().map(|p| p.started_at.as_str()))
            .unwrap_or("-")),
        if fig.live {
            " Served live: reload for the requests of the light load since."
        } else {
            ""
        }
    );
    html.push_str("<div class=\"tiles\">");
    if let Some(p) = &fig.prefix {
        tile(
            &mut html,
            "prefix-cache hit rate",
            &format!(
                "{} vs {}",
                pct(p.precise.engine_hit_rate),
                pct(p.random.engine_hit_rate)
            ),
            "precise vs random routing",
        );
        tile(
            &mut html,
            "TTFT p50",
            &format!(
                "{} vs {} ms",
                num(p.precise.ttft_p[0]),
                num(p.random.ttft_p[0])
            ),
            "precise vs random routing",
        );
    }
    if let Some(p) = &fig.pd {
        tile(
            &mut html,
            "EPP decisions",
            &format!(
                "{:.0} P/D, {:.0} decode-only",
                p.pd_decisions, p.decode_only
            ),
            &format!("threshold: {} tokens the decode pod lacks", p.threshold),
        );
    }
    if !points.is_empty() {
        let t: Vec<f64> = points.iter().map(|p| p.true_ttft).collect();
        let e: Vec<f64> = points.iter().filter_map(|p| p.engine_ttft).collect();
        tile(
            &mut html,
            "true TTFT p50",
            &format!("{} ms", num(quantile(&t, 0.5))),
            &format!("the decode engine reports {} ms", num(quantile(&e, 0.5))),
        );
    }
    if let Some(p) = &fig.pd {
        tile(
            &mut html,
            "NIXL transfers",
            &format!("{:.0}", p.transfers),
            &format!(
                "mean {} ms, {}",
                p.xfer_time_mean_ms.map_or_else(|| "-".to_owned(), num),
                p.xfer_bytes_mean.map_or_else(|| "-".to_owned(), bytes)
            ),
        );
    }
    html.push_str("</div>");

    html.push_str(
        "<section id=\"part1\"><h2>Part 1: precise prefix-cache routing vs random routing</h2>",
    );
    match &fig.prefix {
        Some(p) => {
            let _ = write!(
                html,
                "<p class=\"lead\">The same shared-prefix load on four simulators routed by the EPP's precise \
                 prefix-cache scorer ({} requests, {} ok), then on four fresh ones at random ({} requests, {} ok). \
                 Each pod's KV cache holds about a quarter of the prefixes: routing by prefix keeps each one \
                 cached on one pod.</p><div class=\"charts\">{}</div>",
                p.precise.requests,
                p.precise.ok,
                p.random.requests,
                p.random.ok,
                prefix_charts(p)
            );
        }
        None => html.push_str("<p class=\"note\">Not run (--only pd).</p>"),
    }
    html.push_str("</section>");

    html.push_str("<section id=\"part2\"><h2>Part 2: prefill/decode disaggregation</h2>");
    if fig.pd.is_some() || !points.is_empty() {
        let _ = write!(
            html,
            "<p class=\"lead\">Every complete P/D request, from the P/D proxy's span: the true TTFT the client \
             waits for is the prefill leg, plus the proxy's own time, plus the decode leg's TTFT. The decode \
             engine's own TTFT (its <code>llm_request</code> span, the line) sees neither the prefill leg nor \
             the coordinator: it is what a dashboard of vLLM alone would show.{}</p><div class=\"charts\">{}</div>",
            fig.pd
                .as_ref()
                .map(|p| format!(" {} requests, {} ok.", p.requests, p.ok))
                .unwrap_or_default(),
            pd_charts(fig.pd.as_ref(), &points)
        );
    } else {
        html.push_str("<p class=\"note\">Not run (--only prefix).</p>");
    }
    html.push_str("</section>");

    html.push_str(
        "<section id=\"traces\"><h2>Trace explorer</h2><p class=\"lead\">One trace per request, \
         collected in this process: load generator → gateway → EPP → P/D proxy → prefill and decode \
         engines. Click a span for its attributes (the EPP's decision and cache_hit_ratio, the \
         proxy's timings, the engines' gen_ai.*).</p>",
    );
    html.push_str(&explorer(spans));
    html.push_str("</section></main><footer>llmd demo · one self-contained page: no network, no external scripts</footer>");
    let _ = write!(html, "<script>{SCRIPT}</script></body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn span(
        trace: u8,
        id: u8,
        parent: Option<u8>,
        name: &str,
        service: &str,
        (start_ms, end_ms): (u64, u64),
        attributes: Vec<KeyValue>,
    ) -> Received {
        Received {
            service_name: service.to_owned(),
            span: Span {
                trace_id: vec![trace; 16],
                span_id: vec![trace, id, 0, 0, 0, 0, 0, 0],
                parent_span_id: parent.map_or_else(Vec::new, |p| vec![trace, p, 0, 0, 0, 0, 0, 0]),
                name: name.to_owned(),
                start_time_unix_nano: 1_000_000_000_000 + start_ms * 1_000_000,
                end_time_unix_nano: 1_000_000_000_000 + end_ms * 1_000_000,
                attributes,
                ..Default::default()
            },
        }
    }

    /// One request's trace as the demo's components export it.
    fn request(trace: u8, at_ms: u64, decision: &str, true_ttft: f64) -> Vec<Received> {
        use names::services as svc;
        let s = names::spans::LOADGEN_REQUEST;
        let mut out = vec![
            span(
                trace,
                1,
                None,
                s,
                svc::LOADGEN,
                (at_ms, at_ms + 100),
                vec![],
            ),
            span(
                trace,
                2,
                Some(1),
                names::spans::GATEWAY_REQUEST,
                svc::GATEWAY,
                (at_ms + 1, at_ms + 99),
                vec![],
            ),
            span(
                trace,
                3,
                Some(2),
                names::spans::EPP_PROFILE_HANDLER_PICK,
                svc::SCHEDULER,
                (at_ms + 2, at_ms + 3),
                vec![
                    kv(a::EPP_DECISION, Value::StringValue(decision.to_owned())),
                    kv(a::EPP_CACHE_HIT_RATIO, Value::DoubleValue(0.25)),
                    kv(a::EPP_PD_THRESHOLD, Value::IntValue(200)),
                    kv(a::EPP_USER_INPUT_BYTES, Value::IntValue(4096)),
                ],
            ),
        ];
        if decision == "decode-only" {
            // The proxy passes it through without spans of its own.
            out.push(span(
                trace,
                6,
                Some(2),
                names::spans::LLM_REQUEST,
                svc::VLLM_DECODE,
                (at_ms + 5, at_ms + 97),
                vec![kv(a::GEN_AI_LATENCY_TTFT, Value::DoubleValue(0.008))],
            ));
            return out;
        }
        let proxy = vec![
            kv("outcome", Value::StringValue("ok".to_owned())),
            kv(a::PD_TRUE_TTFT_MS, Value::DoubleValue(true_ttft)),
            kv(
                a::PD_PREFILL_DURATION_MS,
                Value::DoubleValue(true_ttft - 10.5),
            ),
            kv(a::PD_COORDINATOR_OVERHEAD_MS, Value::DoubleValue(0.7)),
            kv(a::PD_COORDINATOR_TTFT_MS, Value::DoubleValue(0.5)),
            kv(a::PD_DECODE_TTFT_MS, Value::DoubleValue(10.0)),
        ];
        out.push(span(
            trace,
            4,
            Some(2),
            names::spans::PD_PROXY_REQUEST,
            svc::PD_PROXY,
            (at_ms + 4, at_ms + 98),
            proxy,
        ));
        out.push(span(
            trace,
            5,
            Some(4),
            names::spans::PD_PROXY_DECODE,
            svc::PD_PROXY,
            (at_ms + 40, at_ms + 98),
            vec![],
        ));
        out.push(span(
            trace,
            6,
            Some(5),
            names::spans::LLM_REQUEST,
            svc::VLLM_DECODE,
            (at_ms + 41, at_ms + 97),
            vec![kv(a::GEN_AI_LATENCY_TTFT, Value::DoubleValue(0.008))],
        ));
        out
    }

    fn figures() -> Figures {
        let run = |hit: f64, pods: Vec<f64>| RunFigures {
            requests: 100,
            ok: 100,
            engine_hit_rate: hit,
            cached_share: hit,
            epp_hit_rate: hit,
            per_pod: pods,
            matched: vec![
                (0.0, 5.0),
                (1.0, 0.0),
                (8.0, 3.0),
                (16.0, 90.0),
                (32.0, 0.0),
            ],
            ttft_ms: vec![10.0, 12.0, 30.0, 31.0],
            ttft_p: [12.0, 30.0, 31.0],
        };
        Figures {
            prefix: Some(PrefixFigures {
                precise: run(0.85, vec![25.0; 4]),
                random: run(0.3, vec![20.0, 30.0, 25.0, 25.0]),
                started_at: "2026-12-02T00:00:00Z".to_owned(),
            }),
            pd: Some(PdFigures {
                requests: 3,
                ok: 3,
                pd_decisions: 2.0,
                decode_only: 1.0,
                threshold: 200,
                transfers: 4.0,
                xfer_time: vec![
                    (0.005, 0.0),
                    (0.01, 4.0),
                    (0.025, 0.0),
                    (f64::INFINITY, 0.0),
                ],
                xfer_bytes: vec![(2048.0, 0.0), (8.0e6, 4.0), (f64::INFINITY, 0.0)],
                xfer_time_mean_ms: Some(7.5),
                xfer_bytes_mean: Some(6.0e6),
                started_at: "2026-12-02T00:00:30Z".to_owned(),
            }),
            live: false,
        }
    }

    #[test]
    fn every_chart_and_the_explorer_are_on_the_page() {
        let mut spans = request(1, 0, "prefill-decode", 50.0);
        spans.extend(request(2, 1500, "prefill-decode", 80.0));
        spans.extend(request(3, 2500, "decode-only", 0.0));
        let html = page(&figures(), Some(&spans));
        for id in [
            "p1-hit-rate",
            "p1-ttft",
            "p1-per-pod",
            "p1-matched",
            "p2-breakdown",
            "p2-overhead",
            "p2-nixl-time",
            "p2-nixl-size",
            "trace-picker",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id} missing");
        }
        // The slowest and the median P/D request and the decode-only one, in that order.
        let picker = &html[html.find("trace-picker").unwrap()..];
        let slowest = picker
            .find("slowest P/D request (true TTFT 80 ms)")
            .unwrap();
        let median = picker.find("median P/D request (true TTFT 50 ms)").unwrap();
        let decode_only = picker.find("a decode-only request").unwrap();
        assert!(slowest < median && median < decode_only);
        // Every span of the three traces has its attribute template; the pick span's carry
        // the EPP's decision and its inputs, marked as key attributes.
        assert_eq!(html.matches("<template id=\"span-").count(), 6 + 6 + 4);
        let t = &html[html.find("<template id=\"span-0-2\">").unwrap()..];
        let t = &t[..t.find("</template>").unwrap()];
        assert!(t.contains(names::spans::EPP_PROFILE_HANDLER_PICK), "{t}");
        for key in [
            "decision",
            "cache_hit_ratio",
            "pd_threshold",
            "user_input_bytes",
        ] {
            assert!(
                t.contains(&format!("<tr class=\"key\"><th>{key}</th>")),
                "{key}: {t}"
            );
        }
        assert!(t.contains("prefill-decode") && t.contains("4096"), "{t}");
        // Nothing fetched from anywhere.
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    }

    #[test]
    fn the_breakdown_stacks_the_proxys_timings_per_time_bin() {
        // 1.5 s of requests: bins of 100 ms, the first two requests in the first.
        let mut spans = request(1, 0, "prefill-decode", 50.0);
        spans.extend(request(2, 20, "prefill-decode", 70.0));
        spans.extend(request(3, 1500, "prefill-decode", 90.0));
        let points = pd_points(&spans);
        let b = bins(&points);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].n, 2);
        assert!((b[0].prefill - 49.5).abs() < 1e-9, "{}", b[0].prefill);
        assert!((b[0].overhead - 0.5).abs() < 1e-9);
        assert!((b[0].decode - 10.0).abs() < 1e-9);
        assert_eq!(b[0].engine, Some(8.0));
        assert!((b[1].prefill - 79.5).abs() < 1e-9);
        let svg = breakdown_chart(&points);
        // Three stacked layers per bin, and the engine's line.
        assert_eq!(svg.matches("<rect x=").count() - 4, 6, "{svg}");
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn a_page_without_parts_or_traces_says_so() {
        let html = page(&Figures::default(), None);
        assert!(html.contains("Not run (--only pd)"));
        assert!(html.contains("Not run (--only prefix)"));
        assert!(html.contains("No traces were collected"));
        let html = page(&Figures::default(), Some(&[]));
        assert!(html.contains("No complete request trace"));
    }

    #[test]
    fn labels_are_escaped_and_buckets_named_by_their_bounds() {
        let svg = grouped_bars(
            "x",
            "<b>",
            "",
            "y",
            &["a&b".to_owned()],
            &[("s", "#000", vec![1.0])],
            &|v| num(v),
        );
        assert!(svg.contains("&lt;b&gt;") && svg.contains("a&amp;b"));
        assert_eq!(
            matched_categories(&[
                (0.0, 1.0),
                (1.0, 1.0),
                (2.0, 1.0),
                (4.0, 1.0),
                (16.0, 1.0),
                (f64::INFINITY, 1.0)
            ]),
            ["0", "1", "2", "3-4", "5-16", "> 16"]
        );
        let svg = bucket_bars(
            "t",
            "t",
            "",
            &[(0.005, 0.0), (0.01, 3.0), (0.025, 1.0), (0.05, 0.0)],
            &|s| format!("{} ms", num(s * 1e3)),
            "#000",
        );
        assert!(
            svg.contains(">5 ms-10 ms<") && svg.contains(">10 ms-25 ms<"),
            "{svg}"
        );
        assert!(!svg.contains("25 ms-50 ms"));
    }
}
