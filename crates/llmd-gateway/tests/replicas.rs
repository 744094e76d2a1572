//! Two llmd-epp replicas behind a real Envoy 1.40 (tests/envoy-replicas.yaml: both replicas in
//! the ext_proc cluster, gRPC health checking and outlier detection), under a bounded streaming
//! load; one replica is killed the hard way (its runtime dropped: listener and every stream cut,
//! no NOT_SERVING, no drain, as a SIGKILL or a node loss does). What the test shows: requests in
//! flight on the dead replica fail (counted and printed with their errors), Envoy stops asking it
//! within its detection window (health-check interval × unhealthy threshold), and every request
//! started after that window succeeds on the survivor. Two cases: killed with streams open on
//! it (`killing_one_of_two_replicas_under_load`), and killed between bursts of load, when what
//! fails is the requests routed to it before Envoy notices (`killing_one_of_two_idle_replicas`).
//! Run with `--no-capture` to see the counts.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::MODEL;
use llmd_epp::config::{EndpointPickerConfig, ROUND_ROBIN_CONFIG};
use llmd_epp::endpoints::{EndpointSpec, EndpointsFile, Role};
use llmd_testkit::peers::envoy_bin;
use llmd_testkit::sim::SimBuilder;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The Envoy config's health checking: `interval` and `unhealthy_threshold` of the `epp`
/// cluster in tests/envoy-replicas.yaml.
const HC_INTERVAL: Duration = Duration::from_secs(1);
const HC_UNHEALTHY_THRESHOLD: u32 = 2;
/// Requests started this long after the kill must all succeed.
const DETECTION_WINDOW: Duration = Duration::from_secs(3);
const _: () = assert!(
    HC_INTERVAL.as_millis() * HC_UNHEALTHY_THRESHOLD as u128 + 1000 <= DETECTION_WINDOW.as_millis()
);

const WORKERS: usize = 8;
const BEFORE_KILL: Duration = Duration::from_secs(3);
/// The detection window plus a few seconds of requests that must all succeed.
const AFTER_KILL: Duration = Duration::from_secs(6);

/// A simulator streaming in real time (about 20 ms per token), so requests last long enough
/// to be in flight when a replica dies.
async fn sim() -> SocketAddr {
    let builder = SimBuilder::new().flags(["--dummy-tokenizer", "--decode-itl-ms", "20"]);
    llmd_testkit::sim::start(builder).await.detach()
}

/// An EPP replica on a runtime of its own, so that it can be killed the hard way.
struct Replica {
    grpc: SocketAddr,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    /// Starts a replica over these pods. Each replica is complete: its own pool, scrapes and
    /// scheduler; the two share nothing.
    fn start(pods: &[SocketAddr]) -> Replica {
        let endpoints = pods
            .iter()
            .map(|p| EndpointSpec {
                address: p.ip().to_string(),
                port: p.port(),
                role: Role::Both,
                model: Vec::new(),
                kv_events: None,
                kv_events_replay: None,
                metrics_port: None,
            })
            .collect();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let epp = rt.block_on(async {
                llmd_epp::start(
                    llmd_epp::Options {
                        config: EndpointPickerConfig::parse(ROUND_ROBIN_CONFIG).unwrap(),
                        endpoints_file: None,
                        endpoints: EndpointsFile { endpoints },
                        kv_events_bind: None,
                        scrape_interval: Duration::from_secs(1),
                        max_body_bytes: 1 << 20,
                        metric_names: Default::default(),
                        metrics_staleness: None,
                        objectives: Vec::new(),
                        subset_filter: true,
                        pool_name: "test".into(),
                        kubernetes: None,
                        limits: Default::default(),
                        grace_period: Duration::from_secs(1),
                        service_name: None,
                        tls: None,
                    },
                    llmd_epp::Listeners::loopback().await.unwrap(),
                    None,
                    CancellationToken::new(),
                )
                .await
                .unwrap()
            });
            addr_tx.send(epp.grpc).unwrap();
            // Serve (on the runtime's worker) until killed, or until the test drops the handle.
            let _ = kill_rx.recv();
            // The kill: every task of the replica is dropped where it stands, its listener and
            // every connection closed with streams half done. Its shutdown token is never
            // cancelled, so it never says NOT_SERVING and drains nothing.
            rt.shutdown_background();
            drop(epp);
        });
        Replica {
            grpc: addr_rx.recv().unwrap(),
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running Envoy with tests/envoy-replicas.yaml in front of two replicas; killed on drop.
struct Envoy {
    addr: SocketAddr,
    admin: u16,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Envoy {
    async fn start(bin: &std::path::Path, a: SocketAddr, b: SocketAddr) -> Envoy {
        let (listen, admin) = (free_port(), free_port());
        let config = include_str!("envoy-replicas.yaml")
            .replace("${LISTEN_PORT}", &listen.to_string())
            .replace("${ADMIN_PORT}", &admin.to_string())
            .replace("${EPP_A}", &a.port().to_string())
            .replace("${EPP_B}", &b.port().to_string());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).unwrap();
        let child = tokio::process::Command::new(bin)
            .arg("-c")
            .arg(&path)
            .args([
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--concurrency",
                "1",
            ])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let envoy = Envoy {
            addr: format!("127.0.0.1:{listen}").parse().unwrap(),
            admin,
            _child: child,
            _dir: dir,
        };
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{admin}/ready")).await
                && r.status() == 200
            {
                return envoy;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("Envoy did not get ready");
    }

    /// The `epp` cluster's hosts as Envoy's `/clusters` prints them: host → (stat → value).
    async fn epp_hosts(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/clusters", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut hosts: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(4, "::");
            if let (Some("epp"), Some(host), Some(stat), Some(value)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
                && host.contains(':')
            {
                hosts
                    .entry(host.to_owned())
                    .or_default()
                    .insert(stat.to_owned(), value.to_owned());
            }
        }
        hosts
    }

    /// One host's stat (`health_flags`, `rq_success`, ...).
    async fn host_stat(&self, host: SocketAddr, stat: &str) -> String {
        self.epp_hosts()
            .await
            .get(&host.to_string())
            .and_then(|h| h.get(stat).cloned())
            .unwrap_or_default()
    }
}

/// What one request through Envoy came to.
struct Outcome {
    start: Instant,
    end: Instant,
    result: Result<(), String>,
}

/// One streaming completion through Envoy: ok when it answered 200 and streamed to `[DONE]`.
async fn one(http: &reqwest::Client, url: &str) -> Result<(), String> {
    let body = json!({"model": MODEL, "prompt": "replicas", "max_tokens": 10, "stream": true});
    let r = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = r.status();
    let text = r
        .text()
        .await
        .map_err(|e| format!("{status}, stream cut: {e}"))?;
    if status != 200 {
        return Err(format!("{status}: {}", text.trim()));
    }
    if !text.contains("data: [DONE]") {
        return Err(format!("{status}, stream ended without [DONE]"));
    }
    Ok(())
}

/// Tallies outcomes: (ok, failed, failures by message).
fn tally<'a>(
    outcomes: impl Iterator<Item = &'a Outcome>,
) -> (usize, usize, BTreeMap<String, usize>) {
    let (mut ok, mut failed, mut why) = (0, 0, BTreeMap::new());
    for o in outcomes {
        match &o.result {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                *why.entry(e.clone()).or_insert(0) += 1;
            }
        }
    }
    (ok, failed, why)
}

/// `WORKERS` clients, each sending one request after the other until `stop`.
fn load(url: &str, stop: Instant) -> tokio::task::JoinHandle<Vec<Outcome>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (http, url) = (http.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while Instant::now() < stop {
                    let start = Instant::now();
                    let result = one(&http, &url).await;
                    outcomes.push(Outcome {
                        start,
                        end: Instant::now(),
                        result,
                    });
                }
                outcomes
            })
        })
        .collect();
    tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for w in workers {
            outcomes.extend(w.await.unwrap());
        }
        outcomes
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_replicas_under_load() {
    kill_one_of_two(true).await;
}

/// The same kill between two bursts of load, no stream open on the replica: what it costs is
/// the requests routed to it before Envoy notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_idle_replicas() {
    kill_one_of_two(false).await;
}

/// Starts the pods, two replicas and Envoy, runs the load, kills one replica `BEFORE_KILL`
/// into it (with streams open when `under_load`; else after the first burst has finished and
/// before the second starts), and checks what came of every request.
async fn kill_one_of_two(under_load: bool) {
    let Some(bin) = envoy_bin() else { return };
    let pods = [sim().await, sim().await];
    let mut doomed = Replica::start(&pods);
    let survivor = Replica::start(&pods);
    let envoy = Envoy::start(&bin, doomed.grpc, survivor.grpc).await;

    // Both replicas pass Envoy's health checks (each says SERVING once it has scraped its pool).
    let mut healthy = false;
    for _ in 0..100 {
        let hosts = envoy.epp_hosts().await;
        if hosts.len() == 2
            && hosts
                .values()
                .all(|h| h.get("health_flags").map(String::as_str) == Some("healthy"))
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        healthy,
        "replicas never healthy: {:?}",
        envoy.epp_hosts().await
    );

    let url = format!("http://{}/v1/completions", envoy.addr);
    let t0 = Instant::now();
    let first = if under_load {
        load(&url, t0 + BEFORE_KILL + AFTER_KILL)
    } else {
        let burst = load(&url, t0 + BEFORE_KILL - Duration::from_secs(1));
        let done = burst.await.unwrap();
        tokio::spawn(async move { done })
    };
    tokio::time::sleep_until((t0 + BEFORE_KILL).into()).await;
    // ext_proc streams Envoy opened to the doomed replica (`rq_total`; `rq_success` counts
    // none: an ext_proc stream ends with the request, not with a gRPC OK).
    let served_before_kill: u64 = envoy
        .host_stat(doomed.grpc, "rq_total")
        .await
        .parse()
        .unwrap_or(0);
    let doomed_active_at_kill = envoy.host_stat(doomed.grpc, "rq_active").await;
    let kill = Instant::now();
    tokio::task::block_in_place(|| doomed.kill());
    let second = (!under_load).then(|| load(&url, kill + AFTER_KILL));

    let mut outcomes = first.await.unwrap();
    if let Some(second) = second {
        outcomes.extend(second.await.unwrap());
    }
    let doomed_flags = envoy.host_stat(doomed.grpc, "health_flags").await;
    let survivor_flags = envoy.host_stat(survivor.grpc, "health_flags").await;

    let before = tally(outcomes.iter().filter(|o| o.end < kill));
    let in_flight = tally(outcomes.iter().filter(|o| o.start < kill && o.end >= kill));
    let window = tally(
        outcomes
            .iter()
            .filter(|o| o.start >= kill && o.start < kill + DETECTION_WINDOW),
    );
    // The last request started after the kill that failed: how long Envoy took to notice.
    let last_failure = outcomes
        .iter()
        .filter(|o| o.start >= kill && o.result.is_err())
        .map(|o| o.start - kill)
        .max();
    let after = tally(
        outcomes
            .iter()
            .filter(|o| o.start >= kill + DETECTION_WINDOW),
    );
    eprintln!(
        "{}: {WORKERS} workers, {BEFORE_KILL:?} before the kill, {AFTER_KILL:?} after; \
         detection window {DETECTION_WINDOW:?}\n\
         completed before the kill: {} ok, {} failed {:?}\n\
         in flight at the kill:     {} ok, {} failed {:?}\n\
         started in the window:     {} ok, {} failed {:?}\n\
         started after the window:  {} ok, {} failed {:?}\n\
         last failed request started {last_failure:?} after the kill\n\
         killed replica: {served_before_kill} ext_proc streams before the kill, \
         {doomed_active_at_kill} open at the kill, now {doomed_flags}; \
         survivor: {survivor_flags}",
        if under_load { "under load" } else { "idle" },
        before.0,
        before.1,
        before.2,
        in_flight.0,
        in_flight.1,
        in_flight.2,
        window.0,
        window.1,
        window.2,
        after.0,
        after.1,
        after.2,
    );

    // The load was real and spread: both replicas served before the kill, nothing failed then.
    assert!(served_before_kill > 0, "the doomed replica served nothing");
    assert_eq!(before.1, 0, "failures before the kill: {:?}", before.2);
    // Envoy took the dead replica out (health checks or outlier detection) and kept the other.
    assert_ne!(
        doomed_flags, "healthy",
        "Envoy still routes to the dead replica"
    );
    assert_eq!(survivor_flags, "healthy");
    // Every request started after the detection window succeeded, and there were some.
    assert!(after.0 > 0, "no requests after the detection window");
    assert_eq!(
        after.1, 0,
        "requests failed after the detection window: {:?}",
        after.2
    );
}
