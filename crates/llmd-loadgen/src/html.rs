//! `--html report.html`: one self-contained file (inline SVG, no scripts, no network) with the
//! summary, latency histograms and per-second time series.
//!
//! The SVG is written here rather than with `plotters`: plotters lays out axis labels with
//! system fonts (font-kit/freetype) even for SVG output, and a few rectangles and polylines do
//! not justify that dependency on every machine that runs a load test.

use std::fmt::Write as _;

use crate::client::Outcome;
use crate::output;
use crate::stats::{Report, quantile};

const W: f64 = 640.0;
const H: f64 = 240.0;
const PAD_L: f64 = 56.0;
const PAD_B: f64 = 36.0;
const PAD_T: f64 = 28.0;
const PAD_R: f64 = 16.0;

/// Escapes text for HTML and SVG (text and attribute values).
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round axis step for a range (about five steps: 1, 2 or 5 times a power of ten).
pub fn nice_step(range: f64) -> f64 {
    if !(range > 0.0 && range.is_finite()) {
        return 1.0;
    }
    let raw = range / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let n = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.round() {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// Frame, title, axes with ticks; returns (svg so far, x→px, y→px).
fn frame(
    title: &str,
    x_label: &str,
    y_label: &str,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> (String, impl Fn(f64) -> f64, impl Fn(f64) -> f64) {
    let (pw, ph) = (W - PAD_L - PAD_R, H - PAD_T - PAD_B);
    let xs = move |x: f64| PAD_L + (x - x0) / (x1 - x0).max(1e-12) * pw;
    let ys = move |y: f64| PAD_T + ph - (y - y0) / (y1 - y0).max(1e-12) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11"><text x="{}" y="16" font-size="13" font-weight="bold">{}</text>"##,
        PAD_L,
        esc(title)
    );
    let _ = write!(
        s,
        r##"<line x1="{PAD_L}" y1="{}" x2="{}" y2="{}" stroke="#444"/><line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{}" stroke="#444"/>"##,
        PAD_T + ph,
        PAD_L + pw,
        PAD_T + ph,
        PAD_T + ph
    );
    let step = nice_step(x1 - x0);
    let mut t = (x0 / step).ceil() * step;
    while t <= x1 + 1e-9 {
        let px = xs(t);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#444"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            PAD_T + ph,
            PAD_T + ph + 4.0,
            PAD_T + ph + 16.0,
            fmt_num(t)
        );
        t += step;
    }
    let step = nice_step(y1 - y0);
    let mut t = (y0 / step).ceil() * step;
    while t <= y1 + 1e-9 {
        let py = ys(t);
        let _ = write!(
            s,
            r##"<line x1="{}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            PAD_L,
            PAD_L + pw,
            PAD_L - 4.0,
            py + 4.0,
            fmt_num(t)
        );
        t += step;
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="12" y="{}" text-anchor="middle" transform="rotate(-90 12 {})">{}</text>"##,
        PAD_L + pw / 2.0,
        H - 4.0,
        esc(x_label),
        PAD_T + ph / 2.0,
        PAD_T + ph / 2.0,
        esc(y_label)
    );
    (s, xs, ys)
}

/// A histogram of samples (ms), 40 bins up to the 99.5th percentile.
pub fn histogram(title: &str, samples: &[f64]) -> String {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return String::new();
    }
    v.sort_by(f64::total_cmp);
    let lo = v[0];
    let hi = quantile(&v, 0.995).max(lo + 1e-6);
    const BINS: usize = 40;
    let width = (hi - lo) / BINS as f64;
    let mut counts = [0u64; BINS];
    for x in &v {
        let i = (((x - lo) / width) as usize).min(BINS - 1);
        counts[i] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1) as f64;
    let (mut s, xs, ys) = frame(title, "ms", "requests", (lo, hi), (0.0, top));
    for (i, c) in counts.iter().enumerate() {
        let (a, b) = (xs(lo + width * i as f64), xs(lo + width * (i + 1) as f64));
        let y = ys(*c as f64);
        let _ = write!(
            s,
            r##"<rect x="{a:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#4e79a7"/>"##,
            (b - a - 1.0).max(0.5),
            (ys(0.0) - y).max(0.0)
        );
    }
    for (p, color) in [(0.5, "#e15759"), (0.99, "#f28e2b")] {
        let x = xs(quantile(&v, p).min(hi));
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{PAD_T}" x2="{x:.1}" y2="{:.1}" stroke="{color}" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="{color}">p{}</text>"##,
            ys(0.0),
            x + 3.0,
            PAD_T + 10.0,
            (p * 100.0) as u32
        );
    }
    s.push_str("</svg>");
    s
}

/// One line of a time-series plot: name, color, (x, y) points.
pub type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// Lines over time (x: seconds).
pub fn series(title: &str, y_label: &str, lines: &[Line<'_>]) -> String {
    let pts = lines.iter().flat_map(|l| l.2.iter());
    let (mut x1, mut y1) = (1.0f64, 1.0f64);
    for (x, y) in pts {
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if lines.iter().all(|l| l.2.is_empty()) {
        return String::new();
    }
    let (mut s, xs, ys) = frame(title, "seconds", y_label, (0.0, x1), (0.0, y1 * 1.05));
    for (i, (name, color, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", xs(*x), ys(*y)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{color}">{}</text>"##,
            path.join(" "),
            W - PAD_R - 140.0,
            PAD_T + 12.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// The whole page.
pub fn page(report: &Report, outcomes: &[Outcome]) -> String {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok()).collect();
    let ttft: Vec<f64> = ok.iter().filter_map(|o| o.ttft_ms).collect();
    let e2e: Vec<f64> = ok.iter().map(|o| o.e2e_ms).collect();
    let itl: Vec<f64> = ok
        .iter()
        .flat_map(|o| o.itl_ms.iter().map(|x| f64::from(*x)))
        .collect();
    let t = &report.timeline;
    let pt = |f: fn(&crate::stats::Second) -> f64| -> Vec<(f64, f64)> {
        t.iter().map(|s| (f64::from(s.t), f(s))).collect()
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>llmd-loadgen report {}</title>\
         <style>body{{font-family:sans-serif;margin:24px;max-width:1320px}}pre{{background:#f6f6f6;padding:12px;overflow:auto}}\
         .plots{{display:flex;flex-wrap:wrap;gap:16px}}</style></head><body>\
         <h1>llmd-loadgen report</h1><p>{} &middot; started {}</p><pre>{}</pre><div class=\"plots\">",
        esc(&report.started_at),
        esc(&report.tool),
        esc(&report.started_at),
        esc(&output::summary(report))
    );
    for svg in [
        histogram("Time to first token (ms)", &ttft),
        histogram("End-to-end latency (ms)", &e2e),
        histogram("Inter-token latency (ms)", &itl),
        series(
            "Requests per second",
            "requests",
            &[
                ("sent", "#4e79a7", pt(|s| s.sent as f64)),
                ("errors", "#e15759", pt(|s| s.errors as f64)),
            ],
        ),
        series(
            "Median latency per second",
            "ms",
            &[
                ("E2E p50", "#4e79a7", pt(|s| s.e2e_p50_ms)),
                ("TTFT p50", "#59a14f", pt(|s| s.ttft_p50_ms)),
            ],
        ),
    ] {
        html.push_str(&svg);
    }
    let _ = write!(
        html,
        "</div><h2>Configuration</h2><pre>{}</pre></body></html>",
        esc(&serde_json::to_string_pretty(&report.config).unwrap_or_default())
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(0.3), 0.1);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let h = histogram("<t>", &[1.0, 2.0, 2.5, 3.0, 10.0]);
        assert!(h.starts_with("<svg") && h.ends_with("</svg>"));
        assert!(h.contains("&lt;t&gt;") && h.matches("<rect").count() == 40);
        assert_eq!(histogram("x", &[]), "");
        let s = series("s", "y", &[("a", "#000", vec![(0.0, 1.0), (1.0, 2.0)])]);
        assert!(s.contains("<polyline"));
    }
}
