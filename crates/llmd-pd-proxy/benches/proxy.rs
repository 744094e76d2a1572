//! The proxy's own cost, against in-process simulators at `--time-scale 0` (so the engines
//! answer as fast as they can and what remains is the proxy):
//!
//! 1. Coordinator overhead of P/D requests offered at 1,000 requests/s for 3 s (streaming, the
//!    figures read from each response's `x-llmd-timing` comment): p50/p99.
//! 2. Pass-through throughput: 32 closed-loop clients for 3 s through the proxy without the
//!    prefill header, against the same clients hitting the decode engine directly (same run).
//! 3. Time to first streamed byte, direct vs through the proxy (pass-through), 1,000 requests
//!    each, interleaved: the median difference is what the relay adds.
//!
//! Run: `cargo bench -p llmd-pd-proxy --bench proxy`

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

async fn sim(flags: &[&str]) -> std::net::SocketAddr {
    let builder = llmd_testkit::sim::SimBuilder::new().flags(flags.iter().copied());
    llmd_testkit::sim::start(builder).await.detach()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `coordinator;dur=X` (ms) from a `: llmd-timing ...` comment.
fn coordinator_ms(body: &str) -> Option<f64> {
    let line = body.lines().find(|l| l.starts_with(": llmd-timing "))?;
    let part = line.split(", ").find(|p| {
        p.trim_start_matches(": llmd-timing ")
            .starts_with("coordinator;dur=")
    })?;
    part.trim_start_matches("coordinator;dur=").parse().ok()
}

async fn closed_loop(url: String, body: serde_json::Value, clients: usize, secs: u64) -> f64 {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, body, done) = (http.clone(), url.clone(), body.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = http.post(&url).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn first_byte(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> f64 {
    let started = Instant::now();
    let r = http.post(url).json(body).send().await.unwrap();
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    let t = started.elapsed().as_secs_f64() * 1e6;
    while s.next().await.is_some() {}
    t
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let common = [
            "--dummy-tokenizer",
            "--time-scale",
            "0",
            "--block-size",
            "16",
            "--num-gpu-blocks",
            "20000",
        ];
        let prefill = sim(&[&common[..], &["--role", "prefill"]].concat()).await;
        let decode = sim(&[&common[..], &["--role", "decode"]].concat()).await;
        let decoder = format!("http://{decode}");
        let args = llmd_pd_proxy::Args::parse_from([
            "llmd-pd-proxy",
            "--decoder",
            &decoder,
            "--allow-prefill",
            "127.0.0.1",
            "--secure-proxy=false",
        ]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = llmd_pd_proxy::start(
            args.config().unwrap(),
            listener,
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap()
        .addr;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();

        // 1. Coordinator overhead at 1,000 P/D requests/s.
        let url = format!("http://{proxy}/v1/completions");
        let mut overheads = Vec::new();
        let mut handles = Vec::new();
        let started = Instant::now();
        let total = 3_000usize;
        for i in 0..total {
            let due = started + Duration::from_micros(1_000 * i as u64);
            tokio::time::sleep_until(due.into()).await;
            let (http, url, prefill) = (http.clone(), url.clone(), prefill.to_string());
            handles.push(tokio::spawn(async move {
                let body = serde_json::json!({"prompt": format!("request {i} with a prompt of a few blocks, enough to transfer some KV"), "max_tokens": 4, "stream": true});
                let r = http
                    .post(&url)
                    .header("x-prefiller-host-port", prefill)
                    .header("x-llmd-timing", "1")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                coordinator_ms(&r.text().await.unwrap())
            }));
        }
        for h in handles {
            if let Some(ms) = h.await.unwrap() {
                overheads.push(ms * 1e3);
            }
        }
        let achieved = total as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "P/D offered 1000/s, completed at {achieved:.0}/s ({} timed): coordinator overhead p50 {:.1} us, p99 {:.1} us",
            overheads.len(),
            pct(&mut overheads, 0.5),
            pct(&mut overheads, 0.99)
        );

        // 2. Pass-through throughput, direct vs proxy, same run.
        let body = serde_json::json!({"prompt": "hi", "max_tokens": 1});
        let direct = closed_loop(
            format!("http://{decode}/v1/completions"),
            body.clone(),
            32,
            3,
        )
        .await;
        let via = closed_loop(url.clone(), body.clone(), 32, 3).await;
        eprintln!(
            "pass-through: direct {direct:.0} req/s, via proxy {via:.0} req/s = {:.2}x",
            via / direct
        );

        // 3. First streamed byte, direct vs through the proxy.
        let sbody = serde_json::json!({"prompt": "hi", "max_tokens": 8, "stream": true});
        let (mut d, mut p) = (Vec::new(), Vec::new());
        let durl = format!("http://{decode}/v1/completions");
        for _ in 0..1_000 {
            d.push(first_byte(&http, &durl, &sbody).await);
            p.push(first_byte(&http, &url, &sbody).await);
        }
        let (dm, pm) = (pct(&mut d, 0.5), pct(&mut p, 0.5));
        eprintln!(
            "first streamed byte: direct p50 {dm:.0} us, via proxy p50 {pm:.0} us, added {:.0} us",
            pm - dm
        );
    });
}
