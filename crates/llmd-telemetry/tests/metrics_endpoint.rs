//! `GET /metrics` serves Prometheus text that parses, carries every registered name with its
//! help text, and histograms with exactly the catalog's buckets (plus `+Inf`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use llmd_telemetry::exposition;
use llmd_telemetry::names::{self, MetricKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_every_catalog_name_with_its_buckets() {
    let catalogs = [
        names::epp::ALL,
        names::kv_cache::ALL,
        names::pd_proxy::ALL,
        names::gateway::ALL,
        names::kubernetes::ALL,
        names::vllm::ALL,
    ];
    // An override, as the simulator sets token-count buckets from --max-model-len.
    let overridden = vec![1.0, 10.0, 100.0];
    let buckets_of = |def: &names::MetricDef| -> Vec<f64> {
        if def.name == names::vllm::NIXL_NUM_DESCRIPTORS.name {
            overridden.clone()
        } else {
            def.buckets.to_vec()
        }
    };
    let handle = llmd_telemetry::install_prometheus(
        &catalogs,
        &[(names::vllm::NIXL_NUM_DESCRIPTORS.name, overridden.clone())],
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = handle.clone();
    tokio::spawn(async move {
        server
            .serve(listener, std::future::pending())
            .await
            .unwrap()
    });
    let get = || async {
        let resp = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        resp.text().await.unwrap()
    };

    // Unlabelled metrics are visible at zero before anything is recorded.
    let before = get().await;
    for def in names::all_metrics().filter(|d| d.labels.is_empty()) {
        assert!(
            before.contains(def.name),
            "{} not pre-registered:\n{before}",
            def.name
        );
    }

    // Record one observation for each metric, with its labels.
    for def in names::all_metrics() {
        let labels: Vec<metrics::Label> = def
            .labels
            .iter()
            .map(|l| metrics::Label::new(*l, format!("{l}-value")))
            .collect();
        match def.kind {
            MetricKind::Counter => metrics::counter!(def.name, labels).increment(3),
            MetricKind::Gauge => metrics::gauge!(def.name, labels).set(0.5),
            MetricKind::Histogram => {
                metrics::histogram!(def.name, labels).record(buckets_of(def)[0])
            }
        }
    }
    let text = get().await;
    let parsed = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    for def in names::all_metrics() {
        assert_eq!(
            parsed.help.get(def.name).map(String::as_str),
            Some(def.help),
            "help of {}",
            def.name
        );
        let kind = match def.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        assert_eq!(
            parsed.types.get(def.name).map(String::as_str),
            Some(kind),
            "type of {}",
            def.name
        );
        let values: Vec<(String, String)> = def
            .labels
            .iter()
            .map(|l| (l.to_string(), format!("{l}-value")))
            .collect();
        let labels: Vec<(&str, &str)> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match def.kind {
            MetricKind::Counter => {
                assert_eq!(parsed.value(def.name, &labels), Some(3.0), "{}", def.name)
            }
            MetricKind::Gauge => {
                assert_eq!(parsed.value(def.name, &labels), Some(0.5), "{}", def.name)
            }
            MetricKind::Histogram => {
                let expected = buckets_of(def);
                let buckets = parsed.buckets(def.name, &labels);
                let bounds: Vec<f64> = buckets
                    .iter()
                    .map(|b| b.0)
                    .filter(|b| b.is_finite())
                    .collect();
                assert_eq!(bounds, expected, "buckets of {}", def.name);
                assert_eq!(
                    buckets.last().map(|b| b.0),
                    Some(f64::INFINITY),
                    "+Inf bucket of {}",
                    def.name
                );
                assert!(
                    buckets.iter().all(|b| b.1 == 1.0),
                    "one observation in every bucket of {}",
                    def.name
                );
                let count = format!("{}_count", def.name);
                assert_eq!(parsed.value(&count, &labels), Some(1.0), "{count}");
            }
        }
    }

    // The real Prometheus parser reads the text (naming lints allowed: see the function).
    llmd_testkit::peers::promtool_check_metrics(&text);
}
