"""The P/D dashboard tells the truth: its TTFT and breakdown panels, evaluated by a real
Prometheus over the demo's P/D stack, agree with what a client measured with its own clock.

`llmd demo --only pd --keep-running --background-rate 0` leaves the P/D stack up with no load of
its own; Prometheus scrapes it every second. The test then sends a streamed load straight to the
P/D sidecar (`llmd loadgen run --header x-prefiller-host-port: ...`, so nothing but the sidecar
stands between the client and the engines) and keeps every request's measurements: TTFT on the
client's clock, and the sidecar's `server-timing` (prefill, coordinator, decode TTFT). Then the
dashboard's own expressions (`dashboards/pd-coordinator.json`, as Grafana would send them with
`$__range` set to the load's window) must agree with the client's means:

| panel | client figure | tolerance |
|---|---|---|
| Avg true TTFT | mean client TTFT | 5% |
| True TTFT breakdown: prefill | mean server-timing prefill | 5% |
| True TTFT breakdown: decode TTFT (true - prefill - coordinator) | mean server-timing decode TTFT | 5%, or 1 ms |
| Avg coordinator overhead | mean server-timing coordinator | 5%, or 1 ms |

The coordinator's figures are small (sub-millisecond to a few ms): the panel counts the proxy's
time over the whole request, the header only up to the first token, so they are compared within
1 ms where 5% of them is less.

    .venv/bin/python -m pytest -q tests/ops/test_pd_dashboard_truth.py
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import prom_util as pu
from test_dashboards import Demo, demo_env

REQUESTS = 40


def panel_expr(board: dict, title: str, index: int = 0) -> str:
    for p in pu.all_panels(board):
        if p.get("title") == title:
            return p["targets"][index]["expr"]
    raise KeyError(title)


def agree(what: str, dashboard: float, client: float, floor_ms: float = 0.0) -> str | None:
    tol = max(0.05 * abs(client), floor_ms)
    if abs(dashboard - client) <= tol:
        return None
    return f"{what}: dashboard {dashboard:.3f} ms vs client {client:.3f} ms (tolerance {tol:.3f} ms)"


@pytest.fixture(scope="module")
def pd_stack(llmd_bin: Path, prometheus: str, tmp_path_factory):
    work = tmp_path_factory.mktemp("pd-truth")
    written = work / "prometheus.yml"
    proc_args = ["--only", "pd", "--keep-running", "--background-rate", "0", "--duration-s", "3", "--time-scale", "1"]
    demo = Demo(llmd_bin, written, work, extra=proc_args)
    prom = None
    try:
        demo.wait_for("prometheus config:", 180)
        config = yaml.safe_load(written.read_text())
        config.setdefault("global", {})["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        copy = work / "prometheus-test.yml"
        copy.write_text(yaml.safe_dump(config))
        prom = pu.Prometheus(prometheus, copy, work)
        prom.wait_ready()
        prefills = demo.wait_for("prefill pods", 180)
        proxy_line = demo.wait_for("decode pod", 60)
        demo.wait_for("stack running", 600)
        prefill = prefills.split()[2].rstrip(",")
        proxy = re.search(r"llmd-pd-proxy at (\S+)", proxy_line).group(1)
        yield prom, demo, prefill, proxy, work
    finally:
        if prom:
            prom.stop()
        demo.stop()


def test_ttft_and_breakdown_panels_agree_with_the_clients_clock(pd_stack, llmd_bin: Path, root: Path) -> None:
    prom, demo, prefill, proxy, work = pd_stack
    board = pu.load_dashboard(root / "dashboards" / "pd-coordinator.json")
    requests_file = work / "requests.jsonl"
    env = demo_env()
    tokenizer = ["--tokenizer", "meta-llama/Llama-3.1-8B-Instruct"] if "HF_HUB_CACHE" in env else ["--tokenizer", "bytes"]
    # The demo's own run has ended when "stack running" is printed, but its last requests may
    # still be scraped: wait well past that, so that the window below (which starts a few quiet
    # seconds before the load, for a known starting value) holds only this load's requests.
    time.sleep(10)
    start = time.time()
    load = subprocess.run(
        [
            str(llmd_bin), "loadgen", "run",
            "--endpoint", f"http://{proxy}/v1",
            "--header", f"x-prefiller-host-port: {prefill}",
            *tokenizer,
            "--input-tokens", "1500-3000", "--output-tokens", "8", "--stream",
            "--load", "concurrency", "--concurrency", "2", "--requests", str(REQUESTS),
            "--no-preflight", "--quiet", "--output-requests", str(requests_file),
        ],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert load.returncode == 0, load.stdout + load.stderr
    time.sleep(4)  # the last increments scraped
    end = time.time()
    outcomes = [json.loads(line) for line in requests_file.read_text().splitlines() if line.strip()]
    ok = [o for o in outcomes if o.get("status") == 200 and not o.get("error") and o.get("ttft_ms") and o.get("server_timing")]
    assert len(ok) >= REQUESTS * 0.9, f"{len(ok)} of {len(outcomes)} requests complete"
    client_ttft = statistics.fmean(o["ttft_ms"] for o in ok)
    st = lambda k: statistics.fmean(o["server_timing"][k] for o in ok)  # noqa: E731

    window = int(end - start) + 5
    builtins = {"__range": f"{window}s", "__range_s": str(window), "__rate_interval": f"{window}s"}

    def value(title: str, index: int = 0) -> float:
        expr = pu.substitute(panel_expr(board, title, index), board, builtins)
        result = prom.query(expr)
        assert pu.has_number(result), f"{title}: no data for {expr}"
        return float(result[0]["value"][1])

    problems = [
        agree("Avg true TTFT", value("Avg true TTFT"), client_ttft),
        agree("breakdown: prefill", value("True TTFT breakdown (means)", 0), st("prefill_ms")),
        agree("breakdown: decode TTFT", value("True TTFT breakdown (means)", 2), st("decode_ttft_ms"), 1.0),
        agree("Avg coordinator overhead", value("Avg coordinator overhead"), st("coordinator_ms"), 1.0),
    ]
    problems = [p for p in problems if p]
    print(
        f"\n{len(ok)} streamed P/D requests: client TTFT {client_ttft:.2f} ms, dashboard {value('Avg true TTFT'):.2f} ms; "
        f"prefill {st('prefill_ms'):.2f} / {value('True TTFT breakdown (means)', 0):.2f}; "
        f"decode TTFT {st('decode_ttft_ms'):.2f} / {value('True TTFT breakdown (means)', 2):.2f}; "
        f"coordinator {st('coordinator_ms'):.3f} / {value('Avg coordinator overhead'):.3f}"
    )
    assert not problems, "\n".join(problems)
