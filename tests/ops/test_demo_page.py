"""The demo as a picture, in a real browser: `llmd demo --html FILE --keep-running` writes the
page and serves it live; Debian's Chromium (headless, driven by playwright-core from
tests/ops/browser) opens both, and a person's checks are made on what it rendered: no console
or page errors and no request leaving the page, every chart drawn from data, the trace
explorer's traces switchable, and a click on a span showing its attributes (the EPP's decision,
the proxy's timings, the decode engine's gen_ai.*).

Leaves target/demo-page/demo.html and the screenshots target/demo-page/demo-page.png (the
file) and target/demo-page/demo-page-live.png (served) for a person to look at.
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, require

BROWSER_DIR = ROOT / "tests" / "ops" / "browser"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHARTS = [
    "p1-hit-rate",
    "p1-ttft",
    "p1-per-pod",
    "p1-matched",
    "p2-breakdown",
    "p2-overhead",
    "p2-nixl-time",
    "p2-nixl-size",
]


def check_page(url: str, screenshot: Path) -> dict:
    """What Chromium saw of the page at `url` (tests/ops/browser/check_demo_page.mjs)."""
    out = subprocess.run(
        ["node", str(BROWSER_DIR / "check_demo_page.mjs"), url, str(screenshot)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, f"the browser check failed:\n{out.stdout}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def judge(seen: dict, page_url: str) -> None:
    assert seen["consoleErrors"] == [], seen["consoleErrors"]
    assert seen["pageErrors"] == [], seen["pageErrors"]
    # Self-contained: the page itself is the only request (inline data: URLs aside).
    others = [r for r in seen["requests"] if r != page_url and not r.startswith("data:")]
    assert others == [], others
    for chart in CHARTS:
        c = seen["charts"].get(chart)
        assert c is not None, f"{chart} missing"
        assert c["visible"] and c["width"] > 300 and c["height"] > 150, (chart, c)
        assert c["marks"] >= 1, f"{chart} drew nothing: {c}"
    # Precise vs random: two series in each part 1 comparison.
    assert seen["charts"]["p1-hit-rate"]["marks"] >= 6, seen["charts"]["p1-hit-rate"]
    assert seen["charts"]["p1-per-pod"]["marks"] >= 8, seen["charts"]["p1-per-pod"]

    labels = [t["label"] for t in seen["traces"]]
    assert any(l.startswith("slowest P/D request") for l in labels), labels
    assert any(l.startswith("median P/D request") for l in labels), labels
    assert any("decode-only" in l for l in labels), labels
    for t in seen["traces"]:
        assert t["visibleTraces"] == 1, t
    slowest = next(t for t in seen["traces"] if t["label"].startswith("slowest"))
    for span in [
        "llmd.loadgen.request",
        "gateway.request",
        "llm_d.epp.request",
        "llm_d.epp.profile_handler.pick",
        "llm_d.pd_proxy.request",
        "llm_d.pd_proxy.prefill",
        "llm_d.pd_proxy.decode",
    ]:
        assert span in slowest["spans"], (span, slowest["spans"])
    assert slowest["spans"].count("llm_request") == 2, slowest["spans"]

    clicked = seen["clicked"]
    pick = clicked["pick"]
    assert pick["heading"] == "llm_d.epp.profile_handler.pick" and pick["selected"], pick
    assert pick["attrs"]["decision"] == "prefill-decode", pick
    assert 0.0 <= float(pick["attrs"]["cache_hit_ratio"]) <= 1.0, pick
    assert int(pick["attrs"]["pd_threshold"]) == 200, pick
    assert int(pick["attrs"]["user_input_bytes"]) > 0, pick
    assert pick["attrs"]["service.name"] == "llm-d-inference-scheduler", pick

    proxy = clicked["proxy"]["attrs"]
    assert proxy["service.name"] == "llm-d-pd-proxy", proxy
    parts = [
        float(proxy[f"llm_d.pd_proxy.{k}"])
        for k in ("prefill_duration_ms", "coordinator_overhead_ms", "decode_ttft_ms")
    ]
    true_ttft = float(proxy["llm_d.pd_proxy.true_ttft_ms"])
    # The identity the proxy measures (the residual is its time after the first token).
    assert abs(true_ttft - sum(parts)) < 0.05 * true_ttft + 1.0, proxy

    engine = clicked["decodeEngine"]["attrs"]
    assert engine["service.name"] == "vllm-decode", engine
    assert float(engine["gen_ai.latency.time_to_first_token"]) > 0, engine
    assert int(engine["gen_ai.usage.prompt_tokens"]) > 0, engine

    decode_only = clicked["decodeOnlyPick"]["attrs"]
    assert decode_only["decision"] == "decode-only", decode_only


def test_the_demo_page_in_chromium(llmd_bin):
    require(CHROMIUM.is_file(), f"no Chromium at {CHROMIUM} (scripts/setup-system.sh installs Debian chromium)")
    require(shutil.which("node") is not None, "no node (scripts/setup-system.sh installs nodejs)")
    require(
        (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(),
        "no playwright-core in tests/ops/browser (bash scripts/setup-browser.sh)",
    )
    out_dir = ROOT / "target" / "demo-page"
    out_dir.mkdir(parents=True, exist_ok=True)
    page_file = out_dir / "demo.html"
    page_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["HF_HUB_CACHE"] = str(ROOT / ".cache" / "hf" / "hub")
    env.pop("RUST_LOG", None)
    stderr = (out_dir / "demo.stderr").open("w")
    demo = subprocess.Popen(
        [
            str(llmd_bin), "demo",
            "--duration-s", "4",
            "--time-scale", "0.02",
            "--pace", "0.05",
            "--background-rate", "1",
            "--html", str(page_file),
            "--keep-running",
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    errors = lambda: (out_dir / "demo.stderr").read_text()
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump():
        for line in demo.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    printed = []
    live_url = None
    deadline = time.monotonic() + 420
    try:
        while live_url is None:
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            assert line is not None, "the demo ended before serving its page:\n" + "".join(printed) + errors()
            printed.append(line)
            if line.startswith("page: http://"):
                live_url = line.split()[1]
        text = "".join(printed)
        assert f"page: {page_file}" in text, text
        # The text summary is still there, unchanged by the page.
        assert "== part 1 results" in text and "== part 2 results" in text, text
        assert "== the true-TTFT breakdown of" in text, text

        judge(check_page(page_file.as_uri(), out_dir / "demo-page.png"), page_file.as_uri())
        judge(check_page(live_url, out_dir / "demo-page-live.png"), live_url)
        assert (out_dir / "demo-page.png").stat().st_size > 10_000
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        stderr.close()
    rest = []
    while True:
        try:
            line = lines.get(timeout=5)
        except queue.Empty:
            break
        if line is None:
            break
        rest.append(line)
    assert demo.returncode == 0, "".join(printed + rest) + errors()
    assert "demo OK" in "".join(rest), "".join(rest)
