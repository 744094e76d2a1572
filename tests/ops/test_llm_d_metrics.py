"""Metric names and labels that dashboards and alerts query are exposed (issue 17, item 3).

Reads every metric name out of every expression of our dashboards (dashboards/*.json) and of
llm-d's dashboard and alert expressions (tests/ops/llm-d/dashboard-and-alert-expressions.yaml,
written from llm-d's monitoring docs and llm-d-router's metrics docs), runs the components with
the `llmd` binary on loopback — three simulators' worth of model servers, the P/D proxy, three
EPPs started with llm-d's flags (precise prefix + `pd-profile-handler` with a decider;
approximate prefix + `disagg-profile-handler`; an always-saturated pool that sheds a sheddable
request), each behind `llmd gateway` — drives a little traffic (P/D and decode-only, streamed
and not, chat, a 400, a 404, a 429), scrapes every `/metrics`, and checks that each name is
exposed, that the labels each expression groups or filters by exist on those series, and that
the label values its `=` matchers ask for (`error_code="ResourceExhausted"`,
`decision_type="prefill-decode"`, ...) occur.

    .venv/bin/python -m pytest -q tests/ops/test_llm_d_metrics.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

import prom_util as pu
from conftest import ROOT, require

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
EXPRESSIONS = ROOT / "tests" / "ops" / "llm-d" / "dashboard-and-alert-expressions.yaml"
# Labels the scrape adds (Kubernetes service discovery, the job), not the components.
TARGET_LABELS = {"pod", "instance", "job", "namespace", "kubernetes_namespace", "node", "gpu", "container"}


# ---- expressions --------------------------------------------------------------------------------

def llm_d_expressions() -> list[tuple[str, str]]:
    doc = yaml.safe_load(EXPRESSIONS.read_text())
    return [(f"llm-d {e['source']}: {e['name']}", e["expr"]) for e in doc["expressions"]]


def excluded() -> dict[str, str]:
    doc = yaml.safe_load(EXPRESSIONS.read_text())
    return {e["metric"]: e["why"] for e in doc["excluded"]}


def dashboard_expressions() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        d = pu.load_dashboard(path)
        for q in pu.queries(d):
            out.append((f"{path.name} {q.where}", pu.substitute(q.expr, d)))
        for q in pu.variable_queries(d):
            out.append((f"{path.name} {q.where}", pu.label_values_as_promql(pu.substitute(q.expr, d))))
    return out


def matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, op, value) of every label matcher attached to a metric name."""
    out = []
    for m in re.finditer(r"(?<![\w:])([A-Za-z_:][\w:]*)\{([^}]*)\}", expr):
        for lm in re.finditer(r'(\w+)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"', m.group(2)):
            out.append((m.group(1), lm.group(1), lm.group(2), lm.group(3)))
    return out


def groupings(expr: str) -> set[str]:
    out = set()
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        out |= {label.strip() for label in m.group(1).split(",") if label.strip()}
    return out


def test_expression_parsing() -> None:
    expr = 'sum by(pod_identifier, le) (rate(a_bucket{error_code="ResourceExhausted", x=~"y"}[5m])) / b'
    assert pu.metric_names(expr) == {"a_bucket", "b"}
    assert matchers(expr) == [("a_bucket", "error_code", "=", "ResourceExhausted"), ("a_bucket", "x", "=~", "y")]
    assert groupings(expr) == {"pod_identifier", "le"}
    assert len(llm_d_expressions()) > 60
    names = set().union(*(pu.metric_names(e) for _, e in llm_d_expressions()))
    assert set(excluded()) <= names, "every exclusion is of a name an expression uses"


# ---- exposition --------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+\S+")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m:
            out.setdefault(m.group(1), []).append(dict(LABEL.findall(m.group(2) or "")))
    return out


# ---- the stack ----------------------------------------------------------------------------------

class Stack:
    def __init__(self, llmd: Path, workdir: Path) -> None:
        self.llmd, self.workdir = llmd, workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = dict(os.environ, RUST_LOG="warn,llmd_epp=info")

    def start(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("w")
        self.procs.append((name, subprocess.Popen([str(self.llmd), *args], stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, env=self.env)))

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{(self.workdir / f'{n}.log').read_text()[-2000:]}" for n, _ in self.procs)

    def check_alive(self) -> None:
        for name, p in self.procs:
            assert p.poll() is None, f"{name} exited ({p.returncode}):\n{self.logs()}"

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            pu.stop_process(p, signal.SIGTERM, 10)


def http(url: str, body: dict | bytes | None = None, headers: dict | None = None, timeout: float = 60) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url: str, stack: Stack, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    pytest.fail(f"{url} never answered:\n{stack.logs()}")


@pytest.fixture(scope="module")
def exposed(llmd_bin, tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    hub = ROOT / ".cache" / "hf" / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots"
    snapshots = sorted(hub.glob("*")) if hub.is_dir() else []
    require(bool(snapshots), "no Llama-3.1 tokenizer in .cache/hf (scripts/fetch-tokenizers.sh)")
    tok = str(snapshots[0])
    work = tmp_path_factory.mktemp("llm-d-metrics")
    p = {k: pu.free_port() for k in ("prefill", "decode", "proxy", "proxy_m", "zmq", "dead",
                                     *(f"{e}_{x}" for e in "abcd" for x in ("grpc", "health", "metrics", "gw", "gw_m")))}
    stack = Stack(llmd_bin, work)
    try:
        sim = ["sim", "--host", "127.0.0.1", "--model", MODEL, "--tokenizer", tok, "--hash-seed", "7",
               "--time-scale", "0.05", "--kv-events-endpoint", f"tcp://127.0.0.1:{p['zmq']}"]
        stack.start("prefill", [*sim, "--port", str(p["prefill"]), "--role", "prefill"])
        # The decode engine behind the proxy publishes under the proxy's address, as llm-d's
        # guides set the topic (POD_IP:POD_PORT of the sidecar).
        stack.start("decode", [*sim, "--port", str(p["decode"]), "--role", "decode", "--data-parallel-rank", "1",
                               "--kv-events-topic", f"kv@127.0.0.1:{p['proxy']}@{MODEL}"])
        # llm-d's sidecar flags.
        stack.start("proxy", ["pd-proxy", "--host", "127.0.0.1", "--port", str(p["proxy"]), "--metrics-port",
                              str(p["proxy_m"]), "--model-server-port", str(p["decode"]), "--kv-connector", "nixlv2",
                              "--secure-proxy=false", "--enable-ssrf-protection=false"])
        eps = work / "endpoints.yaml"
        eps.write_text(yaml.safe_dump({"endpoints": [
            {"address": "127.0.0.1", "port": p["proxy"], "role": "decode", "model": MODEL, "metricsPort": p["decode"]},
            {"address": "127.0.0.1", "port": p["prefill"], "role": "prefill", "model": MODEL},
        ]}))
        dead = work / "dead-endpoints.yaml"
        dead.write_text(yaml.safe_dump({"endpoints": [
            {"address": "127.0.0.1", "port": p["decode"], "model": MODEL, "metricsPort": p["dead"]}]}))
        configs = {
            "a": {"plugins": [
                {"type": "precise-prefix-cache-scorer", "parameters": {"hashSeed": "7", "tokenizer": tok}},
                {"type": "queue-scorer"}, {"type": "decode-filter"}, {"type": "prefill-filter"},
                {"type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": 8}},
                {"type": "pd-profile-handler", "parameters": {"deciderPluginName": "prefix-based-pd-decider"}}],
                "schedulingProfiles": [
                    {"name": "decode", "plugins": [{"pluginRef": "decode-filter"},
                                                   {"pluginRef": "precise-prefix-cache-scorer", "weight": 2},
                                                   {"pluginRef": "queue-scorer"}]},
                    {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, {"pluginRef": "queue-scorer"}]}]},
            "b": {"plugins": [
                {"type": "prefix-cache-scorer"}, {"type": "queue-scorer"}, {"type": "decode-filter"},
                {"type": "prefill-filter"}, {"type": "always-disagg-pd-decider"},
                {"type": "disagg-profile-handler", "parameters": {"deciders": {"prefill": "always-disagg-pd-decider"}}}],
                "schedulingProfiles": [
                    {"name": "decode", "plugins": [{"pluginRef": "decode-filter"},
                                                   {"pluginRef": "prefix-cache-scorer", "weight": 2},
                                                   {"pluginRef": "queue-scorer"}]},
                    {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, {"pluginRef": "queue-scorer"}]}]},
            # Its pod's metrics cannot be read: GIE counts that as saturated, so a sheddable
            # request gets 429 and any other is routed.
            "c": {"plugins": [{"type": "round-robin-picker"}],
                  "inferenceObjectives": [{"name": "batch", "priority": -1}]},
            # Flow control (llm-d's gate): requests pass through its queues, so its series exist.
            "d": {"featureGates": ["flowControl"], "plugins": [{"type": "round-robin-picker"}],
                  "flowControl": {"defaultRequestTTL": "5s"},
                  "inferenceObjectives": [{"name": "premium", "priority": 10}]},
        }
        for e, cfg in configs.items():
            path = work / f"epp-{e}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            args = ["epp", "--host", "127.0.0.1", "--grpc-port", str(p[f"{e}_grpc"]), "--grpc-health-port",
                    str(p[f"{e}_health"]), "--metrics-port", str(p[f"{e}_metrics"]), "--config-file", str(path),
                    "--endpoints-file", str(dead if e == "c" else eps), "--zap-encoder", "json", "--v", "4",
                    "--kv-cache-usage-percentage-metric", "vllm:kv_cache_usage_perc", "--refresh-metrics-interval",
                    "100ms", "--secure-serving=false", "--tracing=false"]
            if e == "a":
                args += ["--kv-events-bind", f"tcp://127.0.0.1:{p['zmq']}"]
            stack.start(f"epp-{e}", args)
            stack.start(f"gateway-{e}", ["gateway", "--host", "127.0.0.1", "--port", str(p[f"{e}_gw"]),
                                         "--metrics-port", str(p[f"{e}_gw_m"]),
                                         "--epp", f"http://127.0.0.1:{p[f'{e}_grpc']}"])
        for port in (p["prefill"], p["decode"], p["proxy_m"], p["a_metrics"], p["b_metrics"], p["c_metrics"], p["d_metrics"]):
            wait_http(f"http://127.0.0.1:{port}/metrics", stack)
        time.sleep(1)  # the EPPs' first scrapes

        def complete(e: str, prompt: str, expect: int = 200, headers: dict | None = None, **extra) -> bytes:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, **extra}
            status, out = http(f"http://127.0.0.1:{p[e + '_gw']}/v1/completions", body, headers)
            assert status == expect, f"{e} {prompt[:30]!r}: {status} {out[:300]!r}\n{stack.logs()}"
            return out

        doc = " ".join(f"word{i}" for i in range(300))
        complete("a", doc)                              # uncached: P/D through the proxy
        complete("a", doc)                              # decode-only once cached (or P/D again)
        complete("a", "hi")                             # shorter than nonCachedTokens: decode-only
        complete("a", doc + " more", stream=True, stream_options={"include_usage": True}, max_tokens=8)
        status, out = http(f"http://127.0.0.1:{p['a_gw']}/v1/chat/completions",
                           {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4})
        assert status == 200, out
        status, _ = http(f"http://127.0.0.1:{p['a_gw']}/v1/completions", b"{not json")
        assert status == 400
        complete("a", "hi", expect=404, model="not-served")
        complete("b", doc)
        complete("b", doc)
        complete("c", "hi", expect=429, headers={"x-gateway-inference-objective": "batch"})
        complete("c", "hi", headers={"x-llm-d-inference-fairness-id": "tenant-a"})
        complete("d", "hi", headers={"x-llm-d-inference-fairness-id": "tenant-a"})
        complete("d", "hi", headers={"x-gateway-inference-objective": "premium"})
        time.sleep(1)  # pool gauges after the next scrapes
        stack.check_alive()
        out: dict[str, list[dict[str, str]]] = {}
        for port in (p["prefill"], p["decode"], p["proxy_m"], p["a_metrics"], p["b_metrics"], p["c_metrics"], p["d_metrics"]):
            for name, series in parse(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()).items():
                out.setdefault(name, []).extend(series)
        yield out
    finally:
        stack.stop()


def check(where: str, expr: str, exposed: dict[str, list[dict[str, str]]]) -> list[str]:
    skip = excluded()
    names = pu.metric_names(expr) - set(skip)
    problems = [f"{where}: {n} is not exposed" for n in sorted(names) if n not in exposed]
    for metric, label, op, value in matchers(expr):
        if metric in skip or metric not in exposed or label in TARGET_LABELS:
            continue
        series = exposed[metric]
        if op == "=" and value:
            if not any(s.get(label) == value for s in series):
                seen = sorted({s.get(label, "") for s in series})
                problems.append(f"{where}: no {metric}{{{label}={value!r}}} (values seen: {seen})")
        elif not any(label in s for s in series):
            problems.append(f"{where}: {metric} has no label {label}")
    for label in groupings(expr) - TARGET_LABELS:
        present = [n for n in names if n in exposed and any(label in s for s in exposed[n])]
        if not present and names:
            problems.append(f"{where}: grouped by {label}, which none of {sorted(names)} has")
    return problems


def test_llm_d_dashboard_and_alert_expressions_are_served(exposed) -> None:
    problems = [p for where, expr in llm_d_expressions() for p in check(where, expr, exposed)]
    assert not problems, "\n".join(problems)


def test_our_dashboards_are_served(exposed) -> None:
    problems = [p for where, expr in dashboard_expressions() for p in check(where, expr, exposed)]
    assert not problems, "\n".join(problems)


def test_the_check_bites(exposed) -> None:
    """Control: a name nobody emits, a label value that never occurs, a label that does not exist."""
    assert check("c", "sum(rate(llm_d_epp_no_such_thing_total[5m]))", exposed)
    assert check("c", 'sum(rate(llm_d_epp_request_error_total{error_code="429"}[5m]))', exposed)
    assert check("c", "sum by(colour) (rate(llm_d_epp_request_total[5m]))", exposed)
    assert not check("c", 'sum by(pod_identifier) (rate(llm_d_epp_kv_cache_events_messages_received_total[5m]))', exposed)
