#!/usr/bin/env python3
"""Writes the Grafana dashboards of dashboards/ (stdlib only; run from anywhere).

    python3 dashboards/generate.py          # rewrite pd-coordinator.json and epp-routing.json
    python3 dashboards/generate.py --check  # exit 1 if a committed file differs (tests/ops runs this)

The JSON files are what users import; this script is how they are edited, so that panel ids,
grid positions, datasource references and units stay consistent. Every metric name used here is
in docs/metrics.md; tests/ops/test_dashboards.py checks that, the PromQL syntax (promtool), and
that every query returns data from a Prometheus that scraped `llmd demo --keep-running`.

Conventions:
- every panel and target uses the `datasource` template variable;
- `$model_name` filters the series that carry `model_name` (vLLM, EPP request metrics); the
  P/D proxy's series carry only `connector`;
- the P/D proxy's durations are milliseconds, vLLM's seconds (shown as ms: `* 1000`);
- per-engine panels group by `pod, instance, engine`: in a cluster each vLLM pod is its own
  scrape target (`instance`, `pod`); in `llmd demo` every simulator shares one process and one
  registry and is told apart by vLLM's `engine` label (its data-parallel rank).
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}

# Shorthands for PromQL.
PD = "llm_d_inference_scheduler_pd_proxy"
M = 'model_name=~"$model_name"'
RI = "$__rate_interval"
RANGE = "$__range"

# Decode engines are the engines that pulled KV over NIXL: vLLM's NixlConnector records the
# nixl_* histograms on the side that reads the blocks (decode), so in a cluster and in the demo
# alike this selects the decode engines without relying on pod names.
DECODE_ENGINES = f"on (instance, engine) group by (instance, engine) (vllm:nixl_xfer_time_seconds_count{{{M}}} > 0)"


# Both handlers' decision counters: llm-d's pd-profile-handler and its current
# disagg-profile-handler count the same decision types under two names; a pool runs one of them.
DECISIONS = ("llm_d_inference_scheduler_pd_decision_total", "llm_d_inference_scheduler_disagg_decision_total")
PD_ONLY = 'decision_type="prefill-decode"'


def either(fn: str, sel: str, window: str) -> str:
    return " or ".join(f"{fn}({m}{{{sel}}}[{window}])" for m in DECISIONS)


def rate(metric: str, sel: str = "", window: str = RI) -> str:
    braces = "{" + sel + "}" if sel else ""
    return f"rate({metric}{braces}[{window}])"


def hq(q: float, metric: str, sel: str = "", by: str = "le", scale: str = "") -> str:
    return f"histogram_quantile({q}, sum by ({by}) ({rate(metric + '_bucket', sel)})){scale}"


def mean(metric: str, sel: str = "", window: str = RI, by: str = "") -> str:
    grp = f" by ({by})" if by else ""
    return (
        f"sum{grp} ({rate(metric + '_sum', sel, window)})"
        f" / sum{grp} ({rate(metric + '_count', sel, window)})"
    )


def target(expr: str, legend: str = "", instant: bool = False, fmt: str = "time_series") -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "range": not instant, "instant": instant}
    if fmt != "time_series":
        t["format"] = fmt
    return t


class Board:
    """Lays panels out on Grafana's 24-column grid, row by row, with unique ids."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {"id": self._id(), "type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}}
        )
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self._newline()
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def _add(self, kind: str, title: str, desc: str, targets: list[dict], w: int, h: int, field: dict, options: dict) -> None:
        for ref, t in zip("ABCDEFGHIJ", targets):
            t["refId"] = ref
        self.panels.append(
            {
                "id": self._id(),
                "type": kind,
                "title": title,
                "description": desc,
                "datasource": DS,
                "gridPos": self._place(w, h),
                "targets": targets,
                "fieldConfig": {"defaults": field, "overrides": []},
                "options": options,
            }
        )

    def stat(self, title: str, desc: str, expr: str, unit: str, w: int = 6, decimals: int | None = 2) -> None:
        field = {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}}
        if decimals is not None:
            field["decimals"] = decimals
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        }
        self._add("stat", title, desc, [target(expr, instant=True)], w, 5, field, options)

    def series(self, title: str, desc: str, targets: list[dict], unit: str, w: int = 12, h: int = 8, stack: str = "none", fill: int = 10) -> None:
        field = {
            "unit": unit,
            "color": {"mode": "palette-classic"},
            "custom": {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": fill,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"mode": stack, "group": "A"},
            },
        }
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}, "tooltip": {"mode": "multi", "sort": "desc"}}
        self._add("timeseries", title, desc, targets, w, h, field, options)

    def heatmap(self, title: str, desc: str, expr: str, unit: str, w: int = 12, h: int = 8) -> None:
        options = {
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": unit},
            "rowsFrame": {"layout": "auto"},
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "cellGap": 1,
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
        }
        self._add("heatmap", title, desc, [target(expr, "{{le}}", fmt="heatmap")], w, h, {"unit": unit}, options)

    def bars(self, title: str, desc: str, expr: str, legend: str, unit: str, w: int = 12, h: int = 8) -> None:
        field = {"unit": unit, "min": 0, "color": {"mode": "palette-classic"}}
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "valueMode": "color",
        }
        self._add("bargauge", title, desc, [target(expr, legend, instant=True)], w, h, field, options)

    def dashboard(self, uid: str, title: str, desc: str, tags: list[str], model_query: str) -> dict:
        return {
            "uid": uid,
            "title": title,
            "description": desc,
            "tags": tags,
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "10s",
            "time": {"from": "now-30m", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "links": [],
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "templating": {
                "list": [
                    {
                        "name": "datasource",
                        "label": "Data source",
                        "type": "datasource",
                        "query": "prometheus",
                        "current": {},
                        "hide": 0,
                        "includeAll": False,
                        "multi": False,
                        "options": [],
                        "refresh": 1,
                        "regex": "",
                        "skipUrlSync": False,
                    },
                    {
                        "name": "model_name",
                        "label": "Model",
                        "type": "query",
                        "datasource": DS,
                        "definition": model_query,
                        # Grafana's Prometheus variable editor: qryType 1 = label values.
                        "query": {
                            "qryType": 1,
                            "query": model_query,
                            "metric": model_query.split("(", 1)[1].split(",", 1)[0].strip(),
                            "label": "model_name",
                            "refId": "PrometheusVariableQueryEditor-VariableQuery",
                        },
                        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                        "hide": 0,
                        "includeAll": True,
                        "allValue": ".*",
                        "multi": True,
                        "options": [],
                        "refresh": 2,
                        "regex": "",
                        "sort": 1,
                        "skipUrlSync": False,
                    },
                ]
            },
            "panels": self.panels,
        }


def pd_coordinator() -> dict:
    b = Board()
    ms = " * 1000"

    b.row("P/D coordinator overview")
    b.stat(
        "Avg true TTFT",
        "What the client sees on a P/D request: from the proxy receiving it to the first token of the decode stream "
        "(prefill leg + coordinator overhead + decode TTFT). Mean over the time range, from the proxy's histogram.",
        mean(f"{PD}_true_ttft_milliseconds", window=RANGE),
        "ms",
    )
    b.stat(
        "Avg engine TTFT (decode)",
        "vLLM's own time to first token on the decode engines (engines that pulled KV over NIXL), mean over the time "
        "range. On a P/D request it starts when the decode leg arrives, so it misses the prefill leg: compare with true TTFT.",
        f"1000 * sum({rate('vllm:time_to_first_token_seconds_sum', M, RANGE)} and {DECODE_ENGINES})"
        f" / sum({rate('vllm:time_to_first_token_seconds_count', M, RANGE)} and {DECODE_ENGINES})",
        "ms",
    )
    b.stat(
        "Avg coordinator overhead",
        "Time the P/D proxy itself spent on a request (total minus the time waiting on prefill and decode), mean over the time range.",
        mean(f"{PD}_coordinator_overhead_milliseconds", window=RANGE),
        "ms",
        decimals=3,
    )
    b.stat(
        "Total P/D requests",
        "Requests the P/D proxy handled in the time range, every outcome.",
        f"sum(increase({PD}_requests_total[{RANGE}]))",
        "short",
        decimals=0,
    )
    b.series(
        "True TTFT",
        "Client-visible time to first token of P/D requests (proxy histogram), percentiles.",
        [target(hq(q, f"{PD}_true_ttft_milliseconds"), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "ms",
    )
    b.series(
        "Total request duration",
        "P/D request from arrival at the proxy to the end of the response, percentiles.",
        [target(hq(q, f"{PD}_total_duration_milliseconds"), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "ms",
    )
    b.series(
        "P/D requests by outcome",
        "Requests per second through the P/D proxy, by connector and outcome.",
        [target(f"sum by (connector, outcome) ({rate(f'{PD}_requests_total')})", "{{connector}} {{outcome}}")],
        "reqps",
        w=24,
        h=7,
    )

    b.row("P/D component breakdown")
    b.series(
        "Prefill leg duration",
        "The proxy's prefill leg (retries and backoff included), percentiles.",
        [target(hq(q, f"{PD}_prefill_duration_milliseconds"), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "ms",
        w=8,
    )
    b.series(
        "Decode leg duration",
        "The proxy's decode leg until the end of its response stream, percentiles.",
        [target(hq(q, f"{PD}_decode_duration_milliseconds"), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "ms",
        w=8,
    )
    b.series(
        "Coordinator overhead",
        "The proxy's own time per request, percentiles.",
        [target(hq(q, f"{PD}_coordinator_overhead_milliseconds"), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "ms",
        w=8,
    )
    b.series(
        "True TTFT breakdown (means)",
        "Mean true TTFT split into its parts: prefill leg, coordinator overhead, and decode TTFT as the proxy sees it "
        "(true TTFT minus the other two). Stacked, the parts add up to the mean true TTFT.",
        [
            target(mean(f"{PD}_prefill_duration_milliseconds"), "prefill leg"),
            target(mean(f"{PD}_coordinator_overhead_milliseconds"), "coordinator"),
            target(
                f"({mean(f'{PD}_true_ttft_milliseconds')}) - ({mean(f'{PD}_prefill_duration_milliseconds')})"
                f" - ({mean(f'{PD}_coordinator_overhead_milliseconds')})",
                "decode TTFT",
            ),
        ],
        "ms",
        w=24,
        stack="normal",
        fill=40,
    )

    b.row("Coordinator vs engine")
    b.series(
        "P/D coordination breakdown (coordinator view)",
        "Medians of the proxy's prefill leg, coordinator overhead and decode leg.",
        [
            target(hq(0.5, f"{PD}_prefill_duration_milliseconds"), "prefill p50"),
            target(hq(0.5, f"{PD}_coordinator_overhead_milliseconds"), "coordinator p50"),
            target(hq(0.5, f"{PD}_decode_duration_milliseconds"), "decode p50"),
        ],
        "ms",
    )
    b.series(
        "Engine TTFT (decode engines)",
        "vLLM's time to first token on the engines that pulled KV over NIXL, percentiles.",
        [
            target(
                f"histogram_quantile({q}, sum by (le) ({rate('vllm:time_to_first_token_seconds_bucket', M)} and {DECODE_ENGINES})){ms}",
                f"p{int(q * 100)}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        "ms",
    )
    b.series(
        "Decode TTFT: engine vs coordinator view",
        "Mean decode TTFT as the decode engines report it (vLLM histogram) and as the proxy sees it (true TTFT minus "
        "prefill leg minus coordinator overhead). The gap is network and HTTP time between proxy and engine; the engine "
        "series also counts decode-only requests (which prefill locally).",
        [
            target(
                f"1000 * sum({rate('vllm:time_to_first_token_seconds_sum', M)} and {DECODE_ENGINES})"
                f" / sum({rate('vllm:time_to_first_token_seconds_count', M)} and {DECODE_ENGINES})",
                "engine (vLLM)",
            ),
            target(
                f"({mean(f'{PD}_true_ttft_milliseconds')}) - ({mean(f'{PD}_prefill_duration_milliseconds')})"
                f" - ({mean(f'{PD}_coordinator_overhead_milliseconds')})",
                "coordinator view",
            ),
        ],
        "ms",
    )
    b.series(
        "Engine TTFT per engine",
        "Mean vLLM time to first token of each engine (prefill engines answer the prefill leg: their TTFT is the prompt's compute).",
        [target(f"1000 * {mean('vllm:time_to_first_token_seconds', M, by='pod, instance, engine')}", "{{pod}} {{instance}} engine {{engine}}")],
        "ms",
    )

    b.row("KV cache transfer (NIXL connector)")
    nixl_stats = [
        ("Avg KV transfer time", "Mean NIXL transfer duration over the time range (one observation per TP rank).", f"{mean('vllm:nixl_xfer_time_seconds', M, RANGE)}{ms}", "ms", 2),
        (
            "Avg MB per transfer",
            "Mean bytes per NIXL transfer over the time range, in MiB (per TP rank).",
            f"{mean('vllm:nixl_bytes_transferred', M, RANGE)} / 1048576",
            "mbytes",
            2,
        ),
        ("Total KV transfers", "NIXL transfers in the time range (per TP rank).", f"sum(increase(vllm:nixl_xfer_time_seconds_count{{{M}}}[{RANGE}]))", "short", 0),
        ("Failed KV transfers", "Failed NIXL transfers in the time range.", f"sum(increase(vllm:nixl_num_failed_transfers_total{{{M}}}[{RANGE}]))", "short", 0),
        (
            "Expired KV leases",
            "Requests whose prefilled KV expired on the prefill side before the decode side pulled it, in the time range.",
            f"sum(increase(vllm:nixl_num_kv_expired_reqs_total{{{M}}}[{RANGE}]))",
            "short",
            0,
        ),
    ]
    for (title, desc, expr, unit, dec), w in zip(nixl_stats, (5, 5, 5, 5, 4)):
        b.stat(title, desc, expr, unit, w=w, decimals=dec)
    b.series(
        "KV transfer time",
        "NIXL transfer duration percentiles.",
        [target(hq(q, "vllm:nixl_xfer_time_seconds", M, scale=ms), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "ms",
    )
    b.series(
        "KV transfer post time",
        "Time to post a NIXL transfer (request issued until the transfer starts), percentiles.",
        [target(hq(q, "vllm:nixl_post_time_seconds", M, scale=ms), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "ms",
    )
    b.series(
        "KV bytes transferred",
        "NIXL throughput (bytes per second) per decode engine.",
        [target(f"sum by (pod, instance, engine) ({rate('vllm:nixl_bytes_transferred_sum', M)})", "{{pod}} {{instance}} engine {{engine}}")],
        "Bps",
        w=8,
    )
    b.series(
        "Bytes per transfer",
        "Bytes per NIXL transfer (per TP rank), percentiles.",
        [target(hq(q, "vllm:nixl_bytes_transferred", M), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "bytes",
        w=8,
    )
    b.series(
        "NIXL descriptors per transfer",
        "Descriptors in a NIXL transfer, percentiles.",
        [target(hq(q, "vllm:nixl_num_descriptors", M), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "short",
        w=8,
    )

    return b.dashboard(
        "pd-coordinator-metrics",
        "P/D Coordinator Metrics",
        "llm-d prefill/decode disaggregation as the P/D proxy (llmd-pd-proxy, llm-d routing sidecar) and the vLLM "
        "engines see it: true TTFT and its parts, coordinator overhead, and NIXL KV transfers.",
        ["llm-d", "llmd-rs", "pd-disaggregation", "vllm"],
        "label_values(vllm:num_requests_running, model_name)",
    )


def epp_routing() -> dict:
    b = Board()
    EPP_DEC = "llm_d_epp_routing_decision_duration_seconds"
    MB = "llm_d_epp_prefix_cache_scorer_matched_blocks"
    KVE = "llm_d_epp_kv_cache_events"
    KVI = "llm_d_epp_kv_cache_index"

    def share(window: str) -> str:
        return (
            f"sum by (pod, instance, engine) ({rate('vllm:request_success_total', M, window)})"
            f" / scalar(sum({rate('vllm:request_success_total', M, window)}))"
        )

    b.row("Routing decisions")
    b.stat("Decisions/s", "Routing decisions per second, every EPP (mean over the time range).", f"sum({rate(EPP_DEC + '_count', window=RANGE)})", "ops")
    b.stat(
        "Decision latency p99",
        "99th percentile of the EPP's time to choose endpoints (parse, tokenize, score, pick) over the time range.",
        f"histogram_quantile(0.99, sum by (le) ({rate(EPP_DEC + '_bucket', window=RANGE)}))",
        "s",
        decimals=None,
    )
    b.stat(
        "Prefix-cache hit ratio",
        "Share of scored requests routed to a pod that already held at least one of their prefix blocks (time range).",
        f"sum(increase(llm_d_epp_prefix_cache_hits_total{{{M}}}[{RANGE}])) / sum(increase({MB}_count{{{M}}}[{RANGE}]))",
        "percentunit",
    )
    b.stat(
        "P/D share of decisions",
        "Share of the profile handler's decisions that split the request into prefill and decode "
        "(pd-profile-handler and disagg-profile-handler alike; time range).",
        f'sum({either("increase", M + ", " + PD_ONLY, RANGE)}) / sum({either("increase", M, RANGE)})',
        "percentunit",
    )
    b.series(
        "Decisions/s",
        "Routing decisions per second (every EPP), and inference requests per second by model and target model.",
        [
            target(f"sum({rate(EPP_DEC + '_count')})", "decisions"),
            target(f"sum by (model_name, target_model_name) ({rate('inference_objective_request_total', M)})", "requests {{model_name}} -> {{target_model_name}}"),
        ],
        "ops",
    )
    b.series(
        "Routing decision latency",
        "The EPP's time to choose endpoints for one request, percentiles; and the scheduler's own end-to-end p99.",
        [target(hq(q, EPP_DEC), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)]
        + [target(hq(0.99, "inference_extension_scheduler_e2e_duration_seconds"), "scheduler e2e p99")],
        "s",
    )
    b.series(
        "Per-pod request share",
        "Each engine's share of the requests the engines completed (vLLM request_success_total).",
        [target(share(RI), "{{pod}} {{instance}} engine {{engine}}")],
        "percentunit",
        stack="normal",
        fill=60,
    )
    b.bars(
        "Per-pod request share (time range)",
        "Each engine's share of the requests completed over the time range.",
        share(RANGE),
        "{{pod}} {{instance}} engine {{engine}}",
        "percentunit",
    )
    b.series(
        "P/D vs decode-only decisions",
        "Decisions of the P/D profile handler (pd-profile-handler or disagg-profile-handler) per second, by decision type.",
        [target(f"sum by (decision_type) ({either('rate', M, RI)})", "{{decision_type}}")],
        "ops",
        stack="normal",
        fill=40,
    )
    b.series(
        "Request duration at the EPP",
        "Inference request latency as the EPP measures it (request headers to end of response), percentiles.",
        [target(hq(q, "inference_objective_request_duration_seconds", M), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "s",
    )

    b.row("Prefix cache")
    b.series(
        "Prefix-cache hit ratio",
        "EPP: share of scored requests sent to a pod holding their first prefix blocks. Engines: share of queried prompt "
        "tokens found in the engines' prefix caches (vLLM).",
        [
            target(f"sum({rate('llm_d_epp_prefix_cache_hits_total', M)}) / sum({rate(MB + '_count', M)})", "EPP routing hits"),
            target(f"sum({rate('vllm:prefix_cache_hits_total', M)}) / sum({rate('vllm:prefix_cache_queries_total', M)})", "engine token hits"),
        ],
        "percentunit",
    )
    b.heatmap(
        "Matched prefix blocks (distribution)",
        "Consecutive prefix blocks the chosen pod held, per scored request.",
        f"sum by (le) (increase({MB}_bucket{{{M}}}[{RI}]))",
        "short",
    )
    b.series(
        "Matched prefix blocks",
        "Consecutive prefix blocks the chosen pod held, percentiles.",
        [target(hq(q, MB, M), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        "short",
        w=8,
    )
    b.series(
        "Index lookups",
        "Prefix-index lookups per second, and the mean prefix the best candidate pod held per lookup, in blocks "
        "(llm-d's lookup_hits_total: the best pod's matched blocks, summed).",
        [
            target(f"sum({rate(KVI + '_lookup_requests_total')})", "lookups/s"),
            target(f"sum({rate(KVI + '_lookup_hits_total')}) / sum({rate(KVI + '_lookup_requests_total')})", "blocks matched per lookup"),
        ],
        "ops",
        w=8,
    )
    b.series(
        "Index lookup latency",
        "One prefix-index lookup, percentiles.",
        [target(hq(q, KVI + "_lookup_latency_seconds"), f"p{int(q * 100)}") for q in (0.5, 0.99)],
        "s",
        w=8,
    )

    b.row("KV-event stream health")
    b.series(
        "KV-event messages",
        "KV-event messages received per second from each model server.",
        [target(f"sum by (pod) ({rate(KVE + '_messages_received_total')})", "{{pod}}")],
        "ops",
        w=8,
    )
    b.series(
        "Sequence gaps",
        "Gaps in each model server's KV-event sequence numbers (lost messages: the index may be stale for that pod).",
        [target(f"sum by (pod) (increase({KVE}_sequence_gaps_total[{RI}]))", "{{pod}}")],
        "short",
        w=8,
    )
    b.series(
        "Decode errors",
        "KV-event messages or events that could not be decoded and were skipped, by reason.",
        [target(f"sum by (reason) (increase({KVE}_decode_errors_total[{RI}]))", "{{reason}}")],
        "short",
        w=8,
    )
    b.series("Index entries", "Block-to-pod entries the prefix index holds.", [target(f"sum({KVI}_entries)", "entries")], "short", w=8)
    b.series("Index memory", "Bytes of memory the prefix index accounts for its entries.", [target(f"sum({KVI}_bytes)", "bytes")], "bytes", w=8)
    b.series(
        "Index admissions and evictions",
        "Block-to-pod entries added to and evicted from the prefix index per second (evictions keep it within its memory budget).",
        [target(f"sum({rate(KVI + '_admissions_total')})", "admissions"), target(f"sum({rate(KVI + '_evictions_total')})", "evictions")],
        "ops",
        w=8,
    )
    b.series(
        "Subscribers",
        "KV-event subscriber sockets open, and their reconnections.",
        [
            target(f"sum({KVE}_active_subscribers)", "active subscribers"),
            target(f"sum(increase({KVE}_subscriber_reconnections_total[{RI}]))", "reconnections"),
        ],
        "short",
        w=24,
        h=6,
    )

    b.row("Inference pool")
    b.stat("Ready pods", "Ready pods of each inference pool.", "sum by (name) (inference_pool_ready_pods)", "short", w=8, decimals=0)
    b.stat("Avg KV-cache utilization", "Average KV-cache utilization over a pool's pods.", "avg by (name) (inference_pool_average_kv_cache_utilization)", "percentunit", w=8)
    b.stat("Avg queue size", "Average number of requests waiting in a pool's model servers.", "avg by (name) (inference_pool_average_queue_size)", "short", w=8)

    # Flow control (the flowControl feature gate): llm-d's names; the series exist only where the
    # gate is on.
    FC = "llm_d_epp_flow_control"
    FCD = M + ', outcome="Dispatched"'
    b.row("Flow control")
    b.stat("Queued now", "Requests waiting in the EPP's flow-control queue now (all bands and flows).", f"sum({FC}_queue_size{{{M}}})", "short", decimals=0)
    b.stat(
        "Queue wait p90 (dispatched)",
        "90th percentile of the time dispatched requests waited in the flow-control queue over the time range.",
        f"histogram_quantile(0.9, sum by (le) ({rate(FC + '_request_queue_duration_seconds_bucket', FCD, RANGE)}))",
        "s",
        decimals=None,
    )
    b.stat(
        "Refused by flow control",
        "Share of the requests that went through flow control and were not dispatched (queue full, displaced, TTL expired, client gone; time range).",
        f'sum(increase({FC}_requests_total{{outcome!="Dispatched"}}[{RANGE}])) / sum(increase({FC}_requests_total[{RANGE}]))',
        "percentunit",
    )
    b.stat("Pool saturation", "The pool's saturation as the flow-control dispatcher last saw it (1.0 and above: requests wait).", f"max by (inference_pool) ({FC}_pool_saturation)", "percentunit")
    b.series(
        "Queue size by priority",
        "Requests waiting in each priority band.",
        [target(f"sum by (priority) ({FC}_queue_size{{{M}}})", "priority {{priority}}")],
        "short",
        w=8,
    )
    b.series(
        "Queue size by flow",
        "Requests waiting per fairness id (tenant) and priority.",
        [target(f"sum by (fairness_id, priority) ({FC}_queue_size{{{M}}})", "{{fairness_id}} ({{priority}})")],
        "short",
        w=8,
    )
    b.series(
        "Queue bytes by priority",
        "Bytes of the requests waiting in each priority band (bounded by the bands' and the queue's maxBytes).",
        [target(f"sum by (priority) ({FC}_queue_bytes{{{M}}})", "priority {{priority}}")],
        "bytes",
        w=8,
    )
    b.series(
        "Outcomes",
        "Requests leaving flow control per second, by priority and outcome (Dispatched, RejectedCapacity, EvictedDisplaced, EvictedTTL, EvictedNoEndpoints, EvictedContextCancelled).",
        [target(f"sum by (priority, outcome) ({rate(FC + '_requests_total')})", "{{priority}} {{outcome}}")],
        "ops",
    )
    b.series(
        "Queue wait by priority",
        "Median and 90th percentile of the time dispatched requests waited, per priority band.",
        [
            target(hq(0.5, FC + "_request_queue_duration_seconds", FCD, by="le, priority"), "p50 {{priority}}"),
            target(hq(0.9, FC + "_request_queue_duration_seconds", FCD, by="le, priority"), "p90 {{priority}}"),
        ],
        "s",
    )

    return b.dashboard(
        "llmd-epp-routing",
        "EPP Routing",
        "llm-d endpoint picker: routing decisions and their latency, prefix-cache routing, per-pod request share, P/D "
        "decisions, and the health of the KV-event stream that feeds the precise prefix-cache scorer.",
        ["llm-d", "llmd-rs", "epp", "routing", "kv-cache"],
        "label_values(inference_objective_request_total, model_name)",
    )


DASHBOARDS = {"pd-coordinator.json": pd_coordinator, "epp-routing.json": epp_routing}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python3 dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
