//! Bad input gets a 4xx vLLM-style JSON error and the simulator keeps serving.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_the_sim_keeps_serving() {
    let (sim, shutdown) = common::start(&[
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--max-model-len",
        "2048",
        "--max-request-body-bytes",
        "65536",
    ])
    .await;
    let base = format!("http://{}", sim.addr);
    let client = reqwest::Client::new();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("/v1/completions", b"{\"prompt\": 12}".to_vec(), 400),
        ("/v1/completions", b"{\"prompt\": \"x\", \"max_tokens\": \"ten\"}".to_vec(), 400),
        ("/v1/completions", b"{\"prompt\": \"x\", \"max_tokens\": 5000}".to_vec(), 400),
        ("/v1/completions", b"{\"prompt\": \"x\", \"max_tokens\": -1}".to_vec(), 400),
        ("/v1/completions", b"{\"prompt\": \"x\", \"stream\": \"yes\"}".to_vec(), 400),
        ("/v1/completions", b"{\"prompt\": \"x\", \"n\": 3}".to_vec(), 400),
        ("/v1/completions", b"{\"prompt\": \"x\", \"model\": \"other\"}".to_vec(), 404),
        ("/v1/completions", b"{\"prompt\": \"x\", \"max_tok".to_vec(), 400),
        ("/v1/completions", b"[1, 2, 3]".to_vec(), 400),
        ("/v1/completions", vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'], 400),
        ("/v1/completions", format!("{{\"prompt\": \"{}\"}}", "y".repeat(3000)).into_bytes(), 400),
        ("/v1/completions", format!("{{\"prompt\": \"{}\"}}", "z".repeat(70_000)).into_bytes(), 413),
        ("/v1/chat/completions", b"{\"messages\": []}".to_vec(), 400),
        ("/v1/chat/completions", b"{\"messages\": \"hi\"}".to_vec(), 400),
        ("/v1/chat/completions", b"{\"messages\": [{\"content\": \"no role\"}]}".to_vec(), 400),
        ("/v1/chat/completions", b"{\"messages\": [{\"role\": \"user\", \"content\": 5}]}".to_vec(), 400),
        ("/v1/chat/completions", b"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_completion_tokens\": 0}".to_vec(), 400),
    ];
    for (path, body, status) in cases {
        let resp = client
            .post(format!("{base}{path}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            status,
            "{path} {}",
            String::from_utf8_lossy(&body)
        );
        let err: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(err["object"], "error", "{err}");
        assert_eq!(err["code"], status);
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    // Still serving.
    let ok: serde_json::Value = client
        .post(format!("{base}/v1/completions"))
        .json(&serde_json::json!({"prompt": "still here", "max_tokens": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["usage"]["completion_tokens"], 2);
    assert_eq!(
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    shutdown.cancel();
}
