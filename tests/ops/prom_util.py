"""Helpers of the dashboard tests: Grafana dashboard JSON, PromQL, promtool and a real Prometheus.

Stdlib and pyyaml only. No Grafana server exists here, so the tests do what Grafana does with a
panel's query: substitute the template variables, then ask Prometheus.
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# ---------------------------------------------------------------------------------------------
# Dashboards


@dataclass(frozen=True)
class Query:
    """One query of a dashboard: a panel's target, or a template variable's query."""

    where: str  # "panel 3 'Avg true TTFT' target A", or "variable model_name"
    expr: str
    panel: dict | None = None
    target: dict | None = None


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def all_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, rows and the panels nested in (collapsed) rows included."""

    def walk(panels: list[dict]) -> Iterator[dict]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    yield from walk(dashboard.get("panels", []))


def queries(dashboard: dict) -> list[Query]:
    out = []
    for p in all_panels(dashboard):
        for t in p.get("targets", []):
            where = f"panel {p['id']} {p.get('title', '')!r} target {t.get('refId', '?')}"
            out.append(Query(where, t["expr"], p, t))
    return out


def variable_queries(dashboard: dict) -> list[Query]:
    out = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        expr = q.get("query") if isinstance(q, dict) else q
        out.append(Query(f"variable {v['name']}", expr))
    return out


# What Grafana puts in place of its built-in variables, for the tests: $__rate_interval as Grafana
# picks it for a short time range and a 1-2 s scrape interval (at least 4 scrape intervals; a
# little more, so a bounded run has every window filled), $__interval as a query step; the live
# test sets $__range to the time range it queries.
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__interval_ms": "5000", "__range": "5m", "__range_s": "300"}

_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, dashboard: dict, builtins: dict[str, str] | None = None) -> str:
    """Grafana's interpolation with every query variable at "All" (its allValue, e.g. `.*`)."""
    values = dict(BUILTINS)
    values.update(builtins or {})
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            values[v["name"]] = v.get("allValue") or ".*"
        elif v.get("type") in ("custom", "constant", "textbox"):
            values[v["name"]] = str(v.get("query", ""))

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(3) or m.group(4)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return _VAR.sub(one, expr)


def label_values_as_promql(expr: str) -> str:
    """`label_values(metric, label)` (a Grafana variable query) as PromQL giving its values."""
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", expr)
    if not m:
        raise ValueError(f"unsupported variable query {expr!r}")
    return f"count by ({m.group(2)}) ({m.group(1)})"


# ---------------------------------------------------------------------------------------------
# PromQL metric names

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords, labels or numbers)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (matcher values)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery windows
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])[A-Za-z_:][\w:]*", s):
        tok = m.group(0)
        if tok.lower() in _KEYWORDS or s[m.end() :].lstrip().startswith("("):
            continue  # keyword, or a function / aggregation being called
        names.add(tok)
    return names


def documented_metrics(metrics_md: Path) -> dict[str, str]:
    """docs/metrics.md's tables: metric name -> type (counter, gauge, histogram)."""
    out = {}
    for line in metrics_md.read_text().splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*(counter|gauge|histogram|summary)\s*\|", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def series_names(documented: dict[str, str]) -> set[str]:
    """The sample names the documented metrics expose (a histogram's _bucket, _sum, _count)."""
    out = set()
    for name, kind in documented.items():
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            out |= {name, f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out


# ---------------------------------------------------------------------------------------------
# promtool


def check_rules(promtool: str, exprs: dict[str, str], workdir: Path) -> tuple[bool, str]:
    """`promtool check rules` on one file holding each expression as a recording rule."""
    rules = [{"record": name, "expr": expr} for name, expr in exprs.items()]
    path = workdir / "dashboard-rules.yml"
    # JSON is YAML: no quoting questions for PromQL's quotes and braces.
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}, indent=1))
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    return run.returncode == 0, run.stdout + run.stderr


# ---------------------------------------------------------------------------------------------
# Prometheus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus server on 127.0.0.1 with its own storage, stopped by `stop()`."""

    def __init__(self, binary: str, config: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout} s: {self.log.read_text()[-2000:]}")

    def query(self, expr: str) -> list[dict]:
        """An instant query at now: the result vector (a scalar result as one sample)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"query failed: {body}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise RuntimeError(f"unexpected result type {data['resultType']} for {expr!r}")
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: str = "2s") -> list[dict]:
        """A range query, as a Grafana time-series panel makes: the result matrix."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        with urllib.request.urlopen(f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(params), timeout=20) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"query failed: {body}")
        return body["data"]["result"]

    def metadata(self) -> dict[str, str]:
        """Metric name -> type, as the scraped targets declared them (`# TYPE`)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/metadata", timeout=10) as r:
            body = json.load(r)
        return {name: entries[0]["type"] for name, entries in body["data"].items() if entries}

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10)
        self._log_file.close()


def has_number(result: list[dict]) -> bool:
    """True when some sample of an instant (vector) or range (matrix) result is a number, not NaN."""
    for series in result:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        for _, value in points:
            try:
                if not math.isnan(float(value)):
                    return True
            except ValueError:
                continue
    return False


def stop_process(proc: subprocess.Popen, first: signal.Signals, grace: float) -> None:
    """`first` (SIGINT, SIGTERM), then SIGKILL after `grace` seconds; always reaps."""
    if proc.poll() is None:
        proc.send_signal(first)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
