//! The EPP's scrape of a model server's `/metrics`: reading the five series it uses
//! (`endpoints::parse_load`, which parses only those samples in full) against the strict full
//! parse of the same text (`exposition::parse`, what the scrape did before), on the exposition
//! of a simulator that has served requests (every vLLM histogram populated).
//!
//! `cargo bench -p llmd-epp --bench scrape`; the ratio of the two is the figure.

#![allow(clippy::unwrap_used)] // bench set-up: a failure is a failed bench

use criterion::{Criterion, criterion_group, criterion_main};
use llmd_testkit::sim::SimBuilder;

fn exposition() -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let metrics =
            llmd_telemetry::install_prometheus(&[llmd_telemetry::names::vllm::ALL], &[]).unwrap();
        let sim =
            llmd_testkit::sim::start(SimBuilder::fast().flags(["--model", "m"]).metrics(metrics))
                .await;
        let client = reqwest::Client::new();
        for i in 0..20 {
            let body = serde_json::json!({"model": "m", "prompt": format!("request {i}"), "max_tokens": 4});
            client
                .post(format!("{}/v1/completions", sim.url()))
                .json(&body)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap();
        }
        client
            .get(format!("{}/metrics", sim.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

fn bench(c: &mut Criterion) {
    let text = exposition();
    let load = llmd_epp::endpoints::parse_load(&text).unwrap();
    assert!(load.num_gpu_blocks.is_some(), "the cache info was read");
    let samples = llmd_telemetry::exposition::parse(&text)
        .unwrap()
        .samples
        .len();
    println!("exposition: {} bytes, {samples} samples", text.len());
    let mut g = c.benchmark_group("scrape");
    g.bench_function("full parse (before)", |b| {
        b.iter(|| llmd_telemetry::exposition::parse(std::hint::black_box(&text)).unwrap())
    });
    g.bench_function("parse_load", |b| {
        b.iter(|| llmd_epp::endpoints::parse_load(std::hint::black_box(&text)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
