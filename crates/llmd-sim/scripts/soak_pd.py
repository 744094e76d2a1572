#!/usr/bin/env python3
"""P/D soak of two simulator processes (not in CI): prefill then decode legs from N client
threads, as the P/D proxy sends them, with a share of prefills never pulled (their leases
expire); prints one JSON line per interval with the pairs done and each process's RSS.

    python crates/llmd-sim/scripts/soak_pd.py --sim target/release/llmd-sim \
        --seconds 3600 --interval 60 --threads 4 [--tokenizer DIR] [-- extra sim flags]

The simulators run with a short KV lease (5 s) so that a soak spends nearly all its time past
the lease time. RSS that keeps growing after the prompt cache is full (`--prompt-cache-tokens`)
is a leak.
"""
import argparse
import json
import random
import subprocess
import threading
import time

import requests


def spawn(binary, role, tokenizer, extra):
    tok = ["--tokenizer", tokenizer] if tokenizer else ["--dummy-tokenizer"]
    p = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", "0", *tok, "--block-size", "16",
         "--time-scale", "0.05", "--kv-lease-seconds", "5", "--role", role, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline().strip()
    return p, line.split("listening on ")[1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim", required=True)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--interval", type=float, default=30)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--tokenizer")
    ap.add_argument("--unpulled", type=float, default=0.1, help="share of prefills never pulled")
    ap.add_argument("extra", nargs="*", help="extra flags for both simulators (after --)")
    a = ap.parse_args()
    pre, pbase = spawn(a.sim, "prefill", a.tokenizer, a.extra)
    dec, dbase = spawn(a.sim, "decode", a.tokenizer, a.extra)
    stop = time.time() + a.seconds
    count = {"pairs": 0, "unpulled": 0, "errors": 0}
    kv = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
          "remote_block_ids": None, "remote_host": None, "remote_port": None}

    def worker(i):
        s = requests.Session()
        rnd = random.Random(i)
        while time.time() < stop:
            prompt = " ".join(f"w{rnd.randrange(10**6)}" for _ in range(rnd.randrange(50, 400)))
            try:
                r = s.post(pbase + "/v1/completions", timeout=30, json={
                    "prompt": prompt, "max_tokens": 1, "kv_transfer_params": kv}).json()
                if rnd.random() < a.unpulled:
                    count["unpulled"] += 1
                    continue
                s.post(dbase + "/v1/completions", timeout=30, json={
                    "prompt": prompt, "max_tokens": 20,
                    "kv_transfer_params": r["kv_transfer_params"]}).raise_for_status()
                count["pairs"] += 1
            except Exception:  # counted, the soak goes on
                count["errors"] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.threads)]
    for t in threads:
        t.start()
    t0 = time.time()

    def report():
        print(json.dumps({"t": round(time.time() - t0), **count,
                          "prefill_rss_mb": round(rss_mb(pre.pid), 1),
                          "decode_rss_mb": round(rss_mb(dec.pid), 1)}), flush=True)

    while time.time() < stop:
        report()
        time.sleep(min(a.interval, max(0.0, stop - time.time())))
    for t in threads:
        t.join()
    report()
    pre.kill()
    dec.kill()


if __name__ == "__main__":
    main()
