#!/usr/bin/env python3
"""Soak of the whole stack as separate processes (not in CI): a fixed-rate load through the
gateway for a long time, with every process's RSS and open fds sampled each minute.

    .venv/bin/python scripts/soak.py --seconds 3600 [--rate 4] [--llmd target/release/llmd]

The stack: two prefill simulators, a decode simulator behind `llmd pd-proxy`, two decode-only
simulators, all publishing KV events to one EPP (precise prefix-cache scorer, P/D decided by
`prefix-based-pd-decider`), and `llmd gateway` in front. The load (`llmd loadgen run`,
constant rate, half of it streamed) mixes shared-prefix conversations and long uncached
prompts, so both decode-only and P/D requests run, the index fills and evicts, and KV leases
expire. Prints one JSON line per minute (requests so far, then `rss_mb`/`fds` per process)
and a summary at the end: per process, RSS at 10 minutes, at the end and the growth per hour
after the first 10 minutes; the load's outcome. Exits non-zero when a process died, a request
failed, or a process's RSS grew by more than --max-growth-mb-per-hour after warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tokenizer_dir() -> str:
    snaps = ROOT / ".cache/hf/hub/models--meta-llama--Llama-3.1-8B-Instruct/snapshots"
    found = sorted(snaps.glob("*")) if snaps.is_dir() else []
    if not found:
        sys.exit("no Llama-3.1 tokenizer in .cache/hf: bash scripts/fetch-tokenizers.sh")
    return str(found[0])


def wait_http(url: str, procs: dict, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                sys.exit(f"{name} exited ({p.returncode}) during start-up")
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"{url} never answered")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llmd", default=str(ROOT / "target/release/llmd"))
    ap.add_argument("--seconds", type=int, default=3600)
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second")
    ap.add_argument("--interval", type=int, default=60, help="seconds between samples")
    ap.add_argument("--time-scale", default="0.1", help="the simulators' timing")
    ap.add_argument("--max-growth-mb-per-hour", type=float, default=50.0)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    llmd = Path(a.llmd)
    if not llmd.exists():
        sys.exit(f"{llmd} missing: cargo build --release -p llmd (or --llmd target/debug/llmd)")
    tok = tokenizer_dir()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="llmd-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RUST_LOG="warn")
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, args: list[str]) -> None:
        log = (work / f"{name}.log").open("w")
        procs[name] = subprocess.Popen([str(llmd), *args], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env)

    p = {k: free_port() for k in ("zmq", "pre1", "pre2", "dec", "proxy", "proxy_m", "d1", "d2",
                                   "grpc", "health", "epp_m", "gw", "gw_m")}
    sim = ["sim", "--host", "127.0.0.1", "--model", MODEL, "--tokenizer", tok, "--hash-seed", "7",
           "--time-scale", a.time_scale, "--kv-events-endpoint", f"tcp://127.0.0.1:{p['zmq']}"]
    try:
        start("prefill-1", [*sim, "--port", str(p["pre1"]), "--role", "prefill"])
        start("prefill-2", [*sim, "--port", str(p["pre2"]), "--role", "prefill"])
        start("decode", [*sim, "--port", str(p["dec"]), "--role", "decode",
                         "--kv-events-topic", f"kv@127.0.0.1:{p['proxy']}@{MODEL}"])
        start("pd-proxy", ["pd-proxy", "--host", "127.0.0.1", "--port", str(p["proxy"]), "--metrics-port",
                           str(p["proxy_m"]), "--model-server-port", str(p["dec"]), "--kv-connector", "nixlv2",
                           "--secure-proxy=false", "--enable-ssrf-protection=false"])
        start("decode-only-1", [*sim, "--port", str(p["d1"])])
        start("decode-only-2", [*sim, "--port", str(p["d2"])])
        (work / "endpoints.yaml").write_text(json.dumps({"endpoints": [
            {"address": "127.0.0.1", "port": p["proxy"], "role": "decode", "model": MODEL, "metricsPort": p["dec"]},
            {"address": "127.0.0.1", "port": p["d1"], "role": "decode", "model": MODEL},
            {"address": "127.0.0.1", "port": p["d2"], "role": "decode", "model": MODEL},
            {"address": "127.0.0.1", "port": p["pre1"], "role": "prefill", "model": MODEL},
            {"address": "127.0.0.1", "port": p["pre2"], "role": "prefill", "model": MODEL},
        ]}))
        (work / "epp.yaml").write_text(json.dumps({
            "plugins": [
                {"type": "precise-prefix-cache-scorer", "parameters": {"hashSeed": "7", "tokenizer": tok}},
                {"type": "queue-scorer"}, {"type": "decode-filter"}, {"type": "prefill-filter"},
                {"type": "max-score-picker"},
                {"name": "pd-decider", "type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": 512}},
                {"type": "disagg-profile-handler", "parameters": {"deciders": {"prefill": "pd-decider"}}}],
            "schedulingProfiles": [
                {"name": "decode", "plugins": [{"pluginRef": "decode-filter"},
                                               {"pluginRef": "precise-prefix-cache-scorer", "weight": 2},
                                               {"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]},
                {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, {"pluginRef": "queue-scorer"},
                                                {"pluginRef": "max-score-picker"}]}]}))
        start("epp", ["epp", "--host", "127.0.0.1", "--grpc-port", str(p["grpc"]), "--grpc-health-port",
                      str(p["health"]), "--metrics-port", str(p["epp_m"]), "--config-file", str(work / "epp.yaml"),
                      "--endpoints-file", str(work / "endpoints.yaml"), "--kv-events-bind",
                      f"tcp://127.0.0.1:{p['zmq']}", "--secure-serving=false"])
        start("gateway", ["gateway", "--host", "127.0.0.1", "--port", str(p["gw"]), "--metrics-port",
                          str(p["gw_m"]), "--epp", f"http://127.0.0.1:{p['grpc']}"])
        for port in (p["pre1"], p["pre2"], p["dec"], p["d1"], p["d2"], p["proxy_m"], p["epp_m"], p["gw_m"]):
            wait_http(f"http://127.0.0.1:{port}/metrics", procs)
        time.sleep(2)

        report = work / "load.json"
        load_log = (work / "loadgen.log").open("w")
        load = subprocess.Popen(
            [str(llmd), "loadgen", "run", "--endpoint", f"http://127.0.0.1:{p['gw']}/v1", "--model", MODEL,
             "--tokenizer", tok, "--load", "constant", "--rate", str(a.rate), "--duration-s", str(a.seconds),
             "--input-tokens", "100-3000", "--output-tokens", "8-64", "--stream",
             "--no-preflight", "--quiet", "--output", str(report)],
            stdout=load_log, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        samples = []
        while True:
            time.sleep(a.interval if load.poll() is None else 0)
            minute = round((time.monotonic() - started) / 60, 1)
            sample = {"minute": minute}
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(json.dumps({"minute": minute, "died": name, "code": proc.returncode}), flush=True)
                    return 1
                sample[name] = {"rss_mb": round(rss_mb(proc.pid), 1), "fds": fds(proc.pid)}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            if load.poll() is not None:
                break
        # What the EPP decided over the run: P/D and decode-only decisions.
        decisions: dict[str, float] = {}
        text = urllib.request.urlopen(f"http://127.0.0.1:{p['epp_m']}/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("llm_d_inference_scheduler_disagg_decision_total{"):
                kind = line.split('decision_type="', 1)[1].split('"', 1)[0]
                decisions[kind] = decisions.get(kind, 0) + float(line.rsplit(" ", 1)[1])
        print(json.dumps({"epp_decisions": decisions}), flush=True)
        outcome = json.loads(report.read_text()) if report.exists() else {}
        overall = outcome.get("overall", {})
        print(json.dumps({"load": {k: overall.get(k) for k in ("requests", "ok", "errors", "request_throughput")},
                          "loadgen_exit": load.returncode}), flush=True)

        # RSS growth after warm-up (10 minutes, or the first third of a shorter run).
        warm = next((s for s in samples if s["minute"] >= min(10, samples[-1]["minute"] / 3)), samples[0])
        last = samples[-1]
        hours = max((last["minute"] - warm["minute"]) / 60, 1e-9)
        bad = load.returncode != 0 or overall.get("errors", 0) or overall.get("ok") != overall.get("requests")
        print(f"\n{'process':<16} {'RSS warm':>9} {'RSS end':>9} {'MB/hour':>8} {'fds warm':>8} {'fds end':>8}")
        for name in procs:
            growth = (last[name]["rss_mb"] - warm[name]["rss_mb"]) / hours
            bad = bad or growth > a.max_growth_mb_per_hour
            print(f"{name:<16} {warm[name]['rss_mb']:>9.1f} {last[name]['rss_mb']:>9.1f} {growth:>8.1f} "
                  f"{warm[name]['fds']:>8} {last[name]['fds']:>8}")
        print(f"logs and the load report in {work}")
        return 1 if bad else 0
    finally:
        for proc in reversed(list(procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
