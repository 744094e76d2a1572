//! Session affinity and LoRA affinity through the EPP's real interfaces: an ext_proc client
//! drives the request and response phases (the `x-session-token` comes back on the response
//! headers and is sent with the next request), and simulators serve LoRA adapters as vLLM
//! does (`--enable-lora --lora-modules ... --max-loras 1`), the EPP reading their
//! `vllm:lora_requests_info` from each pod's own `/metrics`.
//!
//! Simulators in one process share one metrics registry (and `vllm:lora_requests_info` has no
//! label telling pods apart, as in vLLM), so the LoRA test runs each simulator in a process of
//! its own: this test binary again, running only [`child_sim_process`].
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use common::{MODEL, epp, metric, sim, spec_of, wait_until};
use futures::StreamExt;
use llmd_epp::endpoints::{EndpointSpec, Pool};
use llmd_wire::ext_proc::{Client, RequestDecision, RequestHead};

/// Routes one completions request through the ext_proc stream and answers its response
/// headers (200) as the data plane would: (the chosen pod, the response headers the EPP set).
async fn route_and_respond(
    client: &Client,
    model: &str,
    prompt: &str,
    extra: &[(&str, &str)],
) -> (String, http::HeaderMap) {
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    for (k, v) in extra {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let head = RequestHead {
        method: "POST",
        path: "/v1/completions",
        authority: b"llmd",
        scheme: "http",
        headers: &headers,
    };
    let body = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({"model": model, "prompt": prompt, "max_tokens": 1}))
            .unwrap(),
    );
    let mut c = match client.request(&head, &body).await.unwrap() {
        RequestDecision::Continue(c) => c,
        RequestDecision::Immediate(i) => panic!("refused: {i:?}"),
    };
    let pod = c
        .headers
        .get(llmd_wire::headers::DESTINATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let mut response = http::HeaderMap::new();
    response.insert("content-type", "application/json".parse().unwrap());
    assert!(
        c.stream
            .response_headers(http::StatusCode::OK, &mut response)
            .await
            .unwrap()
            .is_none()
    );
    (pod, response)
}

/// A pod's `/metrics` as vLLM writes it, with a waiting queue the test sets.
async fn queue_stub(waiting: Arc<AtomicU32>) -> u16 {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let w = waiting.load(Ordering::Relaxed);
            async move {
                format!(
                    "vllm:num_requests_waiting{{engine=\"0\",model_name=\"{MODEL}\"}} {w}\nvllm:num_requests_running{{engine=\"0\",model_name=\"{MODEL}\"}} 1\nvllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"{MODEL}\"}} 0.1\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn waiting_seen(pool: &Arc<Pool>, id: &str, w: f64) -> impl FnMut() -> bool {
    let (pool, id) = (pool.clone(), id.to_owned());
    move || {
        pool.snapshot()
            .iter()
            .find(|e| *e.id == *id)
            .and_then(|e| e.fresh_load(Duration::from_secs(5)))
            .is_some_and(|l| l.waiting == w)
    }
}

const SESSION_CONFIG: &str = r#"
plugins:
  - type: queue-scorer
  - type: session-affinity-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: queue-scorer, weight: 1}
      - {pluginRef: session-affinity-scorer, weight: 2}
      - {pluginRef: max-score-picker}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_keeps_the_conversation_on_its_pod_against_load() {
    let flags = ["--model", MODEL, "--dummy-tokenizer", "--time-scale", "0"];
    let (a, _sa) = sim(&flags).await;
    let (b, _sb) = sim(&flags).await;
    let queues = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
    let mut specs = vec![spec_of(&a, "both"), spec_of(&b, "both")];
    for (spec, q) in specs.iter_mut().zip(&queues) {
        spec.metrics_port = Some(queue_stub(q.clone()).await);
    }
    let ids: Vec<String> = specs.iter().map(EndpointSpec::host_port).collect();
    let e = epp(SESSION_CONFIG, specs, None, None).await;
    let pool = e.epp.scheduler.pool().clone();
    for id in &ids {
        wait_until("both pods scraped", waiting_seen(&pool, id, 0.0)).await;
    }
    let client =
        Client::connect_lazy(&format!("http://{}", e.epp.grpc), Duration::from_secs(10)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;

    // Turn 1: no session yet; the response names the pod it was routed to.
    let (first, response) = route_and_respond(&client, MODEL, "turn 1", &[]).await;
    let token = response
        .get("x-session-token")
        .expect("the response carries x-session-token")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        String::from_utf8(b64.decode(&token).unwrap()).unwrap(),
        first,
        "the token is base64 of the pod's address:port"
    );
    let other = ids.iter().find(|id| **id != first).unwrap().clone();

    // The session's pod becomes the busier one: queue-scorer now prefers the other pod
    // (1 against 0), the session (weight 2) outweighs it.
    let busy = ids.iter().position(|id| *id == first).unwrap();
    queues[busy].store(5, Ordering::Relaxed);
    wait_until("the queue scraped", waiting_seen(&pool, &first, 5.0)).await;
    for turn in 2..6 {
        let (pod, response) = route_and_respond(
            &client,
            MODEL,
            &format!("turn {turn}"),
            &[("x-session-token", &token)],
        )
        .await;
        assert_eq!(pod, first, "turn {turn} stays with its session");
        assert_eq!(
            response.get("x-session-token").unwrap().to_str().unwrap(),
            token
        );
    }
    // Without a token, the load decides.
    let (pod, response) = route_and_respond(&client, MODEL, "another user", &[]).await;
    assert_eq!(pod, other);
    assert_eq!(
        response.get("x-session-token").unwrap().to_str().unwrap(),
        b64.encode(&other),
        "a new session starts on the pod it was routed to"
    );

    // Bad tokens are ignored (routed by load), counted by reason, never refused.
    let invalid = metric(
        "llmd_epp_session_tokens_ignored_total",
        &["reason=\"invalid\""],
    );
    let unknown = metric(
        "llmd_epp_session_tokens_ignored_total",
        &["reason=\"unknown_endpoint\""],
    );
    let gone = b64.encode("10.255.0.1:8000");
    for bad in ["%%% not base64", "/w==", gone.as_str()] {
        let (pod, _) =
            route_and_respond(&client, MODEL, "bad token", &[("x-session-token", bad)]).await;
        assert_eq!(pod, other, "{bad:?} is scored as no session");
    }
    assert_eq!(
        metric(
            "llmd_epp_session_tokens_ignored_total",
            &["reason=\"invalid\""]
        ) - invalid,
        2.0
    );
    assert_eq!(
        metric(
            "llmd_epp_session_tokens_ignored_total",
            &["reason=\"unknown_endpoint\""]
        ) - unknown,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_binds_here_and_moves_only_when_its_pod_is_gone() {
    let flags = ["--model", MODEL, "--dummy-tokenizer", "--time-scale", "0"];
    let (a, _sa) = sim(&flags).await;
    let (b, _sb) = sim(&flags).await;
    let queues = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
    let mut specs = vec![spec_of(&a, "both"), spec_of(&b, "both")];
    for (spec, q) in specs.iter_mut().zip(&queues) {
        spec.metrics_port = Some(queue_stub(q.clone()).await);
    }
    let ids: Vec<String> = specs.iter().map(EndpointSpec::host_port).collect();
    let config = SESSION_CONFIG.replace(
        "  - type: session-affinity-scorer\n",
        "  - type: session-affinity-scorer\n    parameters: {strategy: session_id}\n",
    );
    let e = epp(&config, specs.clone(), None, None).await;
    let pool = e.epp.scheduler.pool().clone();
    for id in &ids {
        wait_until("both pods scraped", waiting_seen(&pool, id, 0.0)).await;
    }
    let client =
        Client::connect_lazy(&format!("http://{}", e.epp.grpc), Duration::from_secs(10)).unwrap();
    let conv = [("x-session-id", "conv-1")];

    let (first, response) = route_and_respond(&client, MODEL, "turn 1", &conv).await;
    assert!(
        response.get("x-session-token").is_none() && response.get("x-session-id").is_none(),
        "the client owns its session id: nothing written back"
    );
    let at = |id: &str| ids.iter().position(|i| i == id).unwrap();
    let other = ids[1 - at(&first)].clone();
    queues[at(&first)].store(5, Ordering::Relaxed);
    wait_until("the queue scraped", waiting_seen(&pool, &first, 5.0)).await;
    for turn in 2..5 {
        let (pod, _) = route_and_respond(&client, MODEL, &format!("turn {turn}"), &conv).await;
        assert_eq!(
            pod, first,
            "turn {turn} stays with its session against the queue"
        );
    }
    // Its pod leaves the pool: the session goes where it is routed and is bound there.
    pool.replace(vec![specs[at(&other)].clone()]);
    let (pod, _) = route_and_respond(&client, MODEL, "turn 5", &conv).await;
    assert_eq!(pod, other);
    pool.replace(specs.clone());
    queues[at(&first)].store(0, Ordering::Relaxed);
    queues[at(&other)].store(5, Ordering::Relaxed);
    wait_until("the queue scraped", waiting_seen(&pool, &first, 0.0)).await;
    wait_until("the queue scraped", waiting_seen(&pool, &other, 5.0)).await;
    for turn in 6..9 {
        let (pod, _) = route_and_respond(&client, MODEL, &format!("turn {turn}"), &conv).await;
        assert_eq!(pod, other, "turn {turn}: the session moved and stays");
    }
}

/// Environment variable carrying a child simulator's flags (separated by U+001F).
const CHILD_FLAGS: &str = "LLMD_AFFINITY_CHILD_SIM_FLAGS";

/// Not a test: a simulator in its own process (its own metrics registry), started by
/// [`child_sim`] through this test binary. It prints its address and serves until its stdin
/// closes. Without the variable it does nothing.
#[test]
#[ignore = "a simulator process for the LoRA test, started by it"]
fn child_sim_process() {
    let Ok(flags) = std::env::var(CHILD_FLAGS) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let flags: Vec<&str> = flags.split('\u{1f}').collect();
        let (s, stop) = sim(&flags).await;
        println!("LLMD_CHILD_SIM {}", s.addr);
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
        stop.cancel();
    });
}

/// A simulator in a child process; killed when dropped.
struct ChildSim {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for ChildSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn child_sim(flags: &[&str]) -> ChildSim {
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_sim_process", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_FLAGS, flags.join("\u{1f}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads to the end, so the child never writes into a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("LLMD_CHILD_SIM ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the child simulator printed its address")
        .parse()
        .unwrap();
    ChildSim { child, addr }
}

const ADAPTERS: [&str; 3] = ["sql", "chat", "code"];

/// A long streamed request for `model` on `pod`, running until the returned task is aborted.
fn hold(pod: std::net::SocketAddr, model: &str) -> tokio::task::JoinHandle<()> {
    let body = serde_json::json!({"model": model, "prompt": "a long answer", "max_tokens": 4000, "stream": true});
    tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(format!("http://{pod}/v1/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut chunks = resp.bytes_stream();
        while let Some(c) = chunks.next().await {
            if c.is_err() {
                break;
            }
        }
    })
}

/// The LoRA-affinity scores of the candidates for a request to `model` (`/debug/route`'s
/// explanation, in-process).
fn lora_scores(e: &common::TestEpp, model: &str) -> std::collections::HashMap<String, f64> {
    let body = serde_json::to_vec(&serde_json::json!({"model": model, "prompt": "x"})).unwrap();
    let req = llmd_epp::request::parse("/v1/completions", &body).unwrap();
    let span = tracing::Span::none();
    let ctx = llmd_epp::scheduling::PickContext {
        request: Some(&req),
        headers: &[],
        subset: None,
        span: &span,
    };
    let (_, explain, _) = e.epp.scheduler.decide(&ctx, true);
    explain
        .unwrap()
        .into_iter()
        .filter(|(_, plugin, _, _)| plugin == "lora-affinity-scorer")
        .map(|(_, _, pod, score)| (pod, score))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_requests_go_where_the_adapter_runs_and_never_to_a_full_pod() {
    let modules: Vec<String> = ADAPTERS
        .iter()
        .map(|a| format!("{a}=/adapters/{a}"))
        .collect();
    let mut flags = vec![
        "--model",
        MODEL,
        "--dummy-tokenizer",
        "--decode-itl-ms",
        "10",
        "--enable-lora",
        "--max-loras",
        "1",
        "--lora-modules",
    ];
    flags.extend(modules.iter().map(String::as_str));
    let pods: Vec<ChildSim> = (0..3).map(|_| child_sim(&flags)).collect();
    // Each endpoint lists the adapters it serves as models, beside the base model.
    let models = std::iter::once(MODEL)
        .chain(ADAPTERS)
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = pods
        .iter()
        .map(|p| {
            format!(
                "{{address: 127.0.0.1, port: {}, model: [{models}]}}",
                p.addr.port()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let specs = llmd_epp::endpoints::EndpointsFile::parse(&format!("endpoints: [{yaml}]"))
        .unwrap()
        .endpoints;
    let ids: Vec<String> = specs.iter().map(EndpointSpec::host_port).collect();
    let e = epp(
        "plugins: [{type: lora-affinity-scorer}, {type: max-score-picker}]\n",
        specs,
        None,
        None,
    )
    .await;
    let pool = e.epp.scheduler.pool().clone();
    let lora_of = |id: &str| {
        pool.snapshot()
            .iter()
            .find(|e| *e.id == *id)
            .and_then(|e| e.fresh_models(Duration::from_secs(5)))
            .and_then(|m| m.lora.clone())
    };
    for id in &ids {
        wait_until("every pod's LoRA state scraped", || {
            lora_of(id).is_some_and(|l| l.max_lora == Some(1))
        })
        .await;
    }
    let addr_of = |id: &str| pods.iter().find(|p| p.addr.to_string() == id).unwrap().addr;
    let client =
        Client::connect_lazy(&format!("http://{}", e.epp.grpc), Duration::from_secs(10)).unwrap();

    // sql: every pod has a free slot (0.8 each); the pod it lands on then runs it.
    let (sql_pod, _) = route_and_respond(&client, "sql", "q", &[]).await;
    let _sql = hold(addr_of(&sql_pod), "sql");
    wait_until("sql running on its pod", || {
        lora_of(&sql_pod).is_some_and(|l| l.running == ["sql"])
    })
    .await;
    // chat: the sql pod's one slot is taken (0), the two others are free (0.8).
    let (chat_pod, _) = route_and_respond(&client, "chat", "q", &[]).await;
    assert_ne!(
        chat_pod, sql_pod,
        "a full pod is not chosen while another has a free slot"
    );
    let _chat = hold(addr_of(&chat_pod), "chat");
    wait_until("chat running on its pod", || {
        lora_of(&chat_pod).is_some_and(|l| l.running == ["chat"])
    })
    .await;
    let free_pod = ids
        .iter()
        .find(|id| **id != sql_pod && **id != chat_pod)
        .unwrap()
        .clone();
    // A chat request waiting on the sql pod (its one slot runs sql).
    let _waiting = hold(addr_of(&sql_pod), "chat");
    wait_until("chat waiting on the sql pod", || {
        lora_of(&sql_pod).is_some_and(|l| l.running == ["sql"] && l.waiting == ["chat"])
    })
    .await;

    // Requests for a running adapter go to the pod running it.
    for i in 0..5 {
        let (pod, _) = route_and_respond(&client, "sql", &format!("sql {i}"), &[]).await;
        assert_eq!(pod, sql_pod, "sql runs there");
        let (pod, _) = route_and_respond(&client, "chat", &format!("chat {i}"), &[]).await;
        assert_eq!(pod, chat_pod, "chat runs there");
        // An adapter running nowhere: the only pod with a free slot.
        let (pod, _) = route_and_respond(&client, "code", &format!("code {i}"), &[]).await;
        assert_eq!(pod, free_pod, "the full pods score lowest");
    }
    // GIE's values, pod by pod.
    let s = lora_scores(&e, "chat");
    assert_eq!(s[&chat_pod], 1.0, "runs chat");
    assert_eq!(s[&free_pod], 0.8, "a free slot");
    assert_eq!(s[&sql_pod], 0.6, "chat waits there, no free slot");
    let s = lora_scores(&e, "code");
    assert_eq!(
        (s[&sql_pod], s[&chat_pod], s[&free_pod]),
        (0.0, 0.0, 0.8),
        "slots full score 0"
    );
    // The base model needs no adapter slot: no preference.
    let s = lora_scores(&e, MODEL);
    assert!(s.values().all(|v| *v == 1.0), "{s:?}");
}
