"""The Grafana dashboards of dashboards/ (issue 9): structure, PromQL, and data from a real stack.

Static: each dashboard is what dashboards/generate.py writes, has its uid, unique panel ids
(panels nested in rows included), a `datasource` variable that every panel, target and query
variable uses, no unknown template variable, every expression valid for promtool, and every
metric name in docs/metrics.md (no query on a metric nobody emits).

Live: `llmd demo --keep-running` (both parts) is scraped by a real Prometheus (Debian
`prometheus`, 127.0.0.1) for a bounded time; then every target of every panel, and every
variable query, must return at least one number. A panel without data fails, named. (The
flow-control row is exempt while the scraped stack has no flow-control series: the demo does not
turn the gate on.)

    .venv/bin/python -m pytest -q tests/ops/test_dashboards.py
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import prom_util as pu
from conftest import ROOT

DASHBOARDS = {
    "pd-coordinator.json": "pd-coordinator-metrics",
    "epp-routing.json": "llmd-epp-routing",
}

# Load phases of the demo (prefix-cache routing, random routing, P/D: each this long), then the
# time the kept-running stack is scraped under its light background load before the queries.
DEMO_DURATION_S = 6
SCRAPE_AFTER_S = 12
SCRAPE_INTERVAL = "1s"


@pytest.fixture(scope="module", params=sorted(DASHBOARDS))
def board(request, root: Path) -> tuple[str, dict]:
    return request.param, pu.load_dashboard(root / "dashboards" / request.param)


# ---------------------------------------------------------------------------------------------
# Static


def test_generated_files_are_current(root: Path) -> None:
    run = subprocess.run([sys.executable, str(root / "dashboards" / "generate.py"), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_uid_title_and_schema(board) -> None:
    name, d = board
    assert d["uid"] == DASHBOARDS[name]
    assert d["title"]
    assert d["schemaVersion"] >= 36
    assert "__inputs" not in d, "the datasource is a template variable, not an import input"


def test_panel_ids_unique(board) -> None:
    _, d = board
    ids = [p.get("id") for p in pu.all_panels(d)]
    assert all(isinstance(i, int) for i in ids), ids
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"duplicate panel ids {dupes}"


def test_every_panel_has_a_query_and_fits_the_grid(board) -> None:
    _, d = board
    for p in pu.all_panels(d):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p.get("targets"), f"panel {p['id']} {p['title']!r} has no query"
            assert p.get("description"), f"panel {p['id']} {p['title']!r} has no description"


def test_datasource_variable_used_everywhere(board) -> None:
    _, d = board
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus"
    want = {"type": "prometheus", "uid": "${datasource}"}
    for p in pu.all_panels(d):
        if p["type"] == "row":
            continue
        assert p.get("datasource") == want, f"panel {p['id']} {p['title']!r}: {p.get('datasource')}"
        for t in p["targets"]:
            assert t.get("datasource") == want, f"panel {p['id']} {p['title']!r} target {t['refId']}"
    for v in variables.values():
        if v["type"] == "query":
            assert v.get("datasource") == want, f"variable {v['name']}"


def test_ref_ids_unique_per_panel(board) -> None:
    _, d = board
    for p in pu.all_panels(d):
        refs = [t.get("refId") for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)) and all(refs), f"panel {p['id']} {p['title']!r}: {refs}"


def test_model_filter_where_the_label_exists(board, root: Path) -> None:
    """A panel on a metric with a `model_name` label follows the Model variable."""
    _, d = board
    text = (root / "docs" / "metrics.md").read_text()
    with_model = {m.group(1) for m in re.finditer(r"\|\s*`([^`]+)`\s*\|[^|]*\|[^|]*`model_name`", text)}
    missing = []
    for q in pu.queries(d):
        for name in pu.metric_names(q.expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if (name in with_model or base in with_model) and not re.search(re.escape(name) + r'\{[^}]*model_name=~"\$model_name"', q.expr):
                missing.append(f"{q.where}: {name}")
    assert not missing, "unfiltered by $model_name:\n" + "\n".join(missing)


def test_metric_names_are_documented(board, root: Path) -> None:
    _, d = board
    known = pu.series_names(pu.documented_metrics(root / "docs" / "metrics.md"))
    assert len(known) > 50, "docs/metrics.md tables not parsed"
    unknown = []
    for q in pu.queries(d) + pu.variable_queries(d):
        expr = pu.label_values_as_promql(q.expr) if q.where.startswith("variable") else q.expr
        names = pu.metric_names(expr)
        assert names, f"{q.where}: no metric in {q.expr!r}"
        unknown += [f"{q.where}: {n}" for n in sorted(names - known)]
    assert not unknown, "metrics not in docs/metrics.md (nobody emits them):\n" + "\n".join(unknown)


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{model_name=~"$m", x="y{z}"}[1m]) '
        "and on (instance, engine) group by (instance, engine) (vllm:b_count > 0))) * 1000 / scalar(sum(c)) "
        "- ignoring(pod) group_left d offset 5m or vector(1e3)"
    )
    assert pu.metric_names(expr) == {"a_bucket", "vllm:b_count", "c", "d"}


def test_promql_is_valid(board, promtool: str, tmp_path: Path) -> None:
    name, d = board
    qs = pu.queries(d) + pu.variable_queries(d)
    exprs = {}
    for i, q in enumerate(qs):
        expr = pu.substitute(q.expr, d)
        if q.where.startswith("variable"):
            expr = pu.label_values_as_promql(expr)
        assert "$" not in expr, f"{q.where}: unsubstituted variable in {expr!r}"
        exprs[f"dashboard:q{i}"] = expr
    ok, out = pu.check_rules(promtool, exprs, tmp_path)
    if ok:
        return
    bad = []  # name each broken query
    for (rule, expr), q in zip(exprs.items(), qs):
        one_ok, one_out = pu.check_rules(promtool, {rule: expr}, tmp_path)
        if not one_ok:
            bad.append(f"{q.where}: {expr}\n  {one_out.strip()}")
    pytest.fail(f"{name}: promtool rejects:\n" + ("\n".join(bad) or out))


def test_substitution_like_grafana() -> None:
    d = {"templating": {"list": [{"name": "model_name", "type": "query", "allValue": ".*"}, {"name": "datasource", "type": "datasource"}]}}
    got = pu.substitute('rate(x{m=~"$model_name", n=~"${model_name:regex}"}[$__rate_interval]) [[model_name]]', d, {"__rate_interval": "30s"})
    assert got == 'rate(x{m=~".*", n=~".*"}[30s]) .*'
    with pytest.raises(KeyError):
        pu.substitute("$nope", d)


def test_no_data_means_no_number() -> None:
    assert not pu.has_number([])
    assert not pu.has_number([{"metric": {}, "value": [1, "NaN"]}, {"metric": {}, "values": [[1, "NaN"], [2, "NaN"]]}])
    assert pu.has_number([{"metric": {}, "values": [[1, "NaN"], [2, "0"]]}])
    assert pu.has_number([{"metric": {}, "value": [1, "+Inf"]}])


# ---------------------------------------------------------------------------------------------
# Live: llmd demo --keep-running, scraped by a real Prometheus


def demo_env() -> dict[str, str]:
    """The demo's environment: the tokenizer from the clone's cache when scripts/fetch-tokenizers.sh
    filled it (as .ci/run does), so that the test neither downloads nor writes outside the clone."""
    env = dict(os.environ)
    hub = ROOT / ".cache" / "hf" / "hub"
    if (hub / "models--meta-llama--Llama-3.1-8B-Instruct").is_dir():
        env["HF_HUB_CACHE"] = str(hub)
    return env


class Demo:
    """`llmd demo` with its stdout read line by line on a thread."""

    def __init__(self, llmd: Path, prom_config: Path, workdir: Path, extra: list[str] | None = None) -> None:
        self.err_path = workdir / "demo.stderr"
        flags = extra if extra is not None else ["--duration-s", str(DEMO_DURATION_S), "--workers", "4", "--keep-running"]
        self._err = self.err_path.open("w")
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [str(llmd), "demo", *flags, "--prometheus-config", str(prom_config)],
            stdout=subprocess.PIPE,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=demo_env(),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line {prefix!r} from llmd demo in {timeout} s; {self.tail()}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"llmd demo exited ({self.proc.wait()}) before {prefix!r}; {self.tail()}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def tail(self) -> str:
        err = self.err_path.read_text()[-3000:] if self.err_path.exists() else ""
        return "stdout:\n" + "\n".join(self.lines[-40:]) + "\nstderr:\n" + err

    def stop(self) -> None:
        pu.stop_process(self.proc, signal.SIGINT, 15)
        self._err.close()


@pytest.fixture(scope="module")
def scraped_stack(llmd_bin: Path, prometheus: str, tmp_path_factory):
    """Prometheus that scraped the demo's whole run plus SCRAPE_AFTER_S of its kept-running stack."""
    work = tmp_path_factory.mktemp("dashboards-live")
    written = work / "prometheus.yml"
    demo = Demo(llmd_bin, written, work)
    prom = None
    try:
        line = demo.wait_for("prometheus config:", 180)  # after a first-run tokenizer fetch
        assert str(written) in line, line
        config = yaml.safe_load(written.read_text())
        # The demo's config as written, scraped faster so that a short run gives rate windows
        # enough samples.
        config.setdefault("global", {})["scrape_interval"] = SCRAPE_INTERVAL
        config["global"]["evaluation_interval"] = SCRAPE_INTERVAL
        copy = work / "prometheus-test.yml"
        copy.write_text(yaml.safe_dump(config))
        prom = pu.Prometheus(prometheus, copy, work)
        prom.wait_ready()
        started = time.time()
        demo.wait_for("stack running", 3 * DEMO_DURATION_S + 180)
        time.sleep(SCRAPE_AFTER_S)
        up = prom.query("up")
        assert up and all(s["value"][1] == "1" for s in up), f"scrape targets not up: {up}; {prom.log.read_text()[-2000:]}"
        yield prom, started, demo
    finally:
        if prom:
            prom.stop()
        demo.stop()


def test_every_panel_returns_data(board, scraped_stack) -> None:
    """Each query as Grafana sends it for a time range that covers the demo's whole run: a
    time-series target as a range query (data if any point is a number), a stat's instant
    target at the end of the range with `$__range` = the range."""
    name, d = board
    prom, start, _ = scraped_stack
    end = time.time()
    window = int(end - start) + 1
    builtins = {"__range": f"{window}s", "__range_s": str(window)}
    empty = []
    # The demo runs without the flowControl gate: its series do not exist there, so the
    # flow-control row is checked only against a stack that exposes them
    # (crates/llmd-epp/tests/flow_control.rs checks that an EPP with the gate emits every
    # series that row reads).
    # (Gauges and histograms without labels are exported as zero series by every EPP: only
    # the per-request counter says that flow control ran.)
    flow_control_on = bool(prom.query("count(llm_d_epp_flow_control_requests_total)"))
    for q in pu.queries(d):
        if not flow_control_on and all(n.startswith("llm_d_epp_flow_control_") for n in pu.metric_names(q.expr)):
            continue
        expr = pu.substitute(q.expr, d, builtins)
        result = prom.query(expr) if q.target.get("instant") else prom.query_range(expr, start, end)
        if not pu.has_number(result):
            empty.append(f"{q.where}: {expr}")
    for q in pu.variable_queries(d):
        expr = pu.label_values_as_promql(pu.substitute(q.expr, d, builtins))
        if not prom.query(expr):
            empty.append(f"{q.where}: {expr}")
    assert not empty, f"{name}: no data from the demo stack for:\n" + "\n".join(empty)


def test_exposed_types_match_docs(board, scraped_stack, root: Path) -> None:
    """Each metric a dashboard reads is exposed with the type docs/metrics.md gives it (a
    histogram exposed as a summary has no `_bucket` series for histogram_quantile)."""
    name, d = board
    prom, _, _ = scraped_stack
    documented = pu.documented_metrics(root / "docs" / "metrics.md")
    exposed = prom.metadata()
    used = set()
    for q in pu.queries(d):
        used |= {re.sub(r"_(bucket|sum|count)$", "", n) if n not in documented else n for n in pu.metric_names(q.expr)}
    wrong = [f"{m}: docs say {documented[m]}, exposed as {exposed[m]}" for m in sorted(used) if m in exposed and exposed[m] != documented[m]]
    assert not wrong, f"{name}:\n" + "\n".join(wrong)
