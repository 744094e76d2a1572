//! What a request can cost the simulator is bounded: a prompt over `--max-prompt-bytes` is
//! refused with 413 before the tokenizer sees it (the prompt cache counts no tokenization),
//! over the context with vLLM's 400; and what the simulator keeps between requests stays within
//! its bounds: P/D leases expire or are taken, every leased or abandoned block comes back to
//! the pool (also when two prefills share a request id, or clients go away), and the prompt
//! cache holds at most `--prompt-cache-tokens`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use llmd_sim::testing::{SimBuilder, spawn};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_prompts_are_refused_before_tokenizing() {
    let tokenizer = common::llama_tokenizer();
    let mut builder = SimBuilder::new().flags(["--time-scale", "0", "--max-model-len", "2048"]);
    builder = match &tokenizer {
        Some(dir) => builder.flags(["--tokenizer", dir.as_str()]),
        None => builder.flag("--dummy-tokenizer"),
    };
    let sim = spawn(builder).await.unwrap();
    let base = sim.url();
    let stats = || sim.sim().state.tokenizer.prompt_cache_stats();
    let before = stats();

    // 10 MB: under the 32 MB body limit, far over 8 bytes per token of a 2,048-token context.
    let huge = "lorem ipsum ".repeat(10 << 20 >> 4);
    for (path, body) in [
        ("/v1/completions", json!({"prompt": huge})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": huge}]}),
        ),
    ] {
        let (status, e) = common::post_json(&base, path, body).await;
        assert_eq!(status, 413, "{path}: {e}");
        assert_eq!(e["object"], "error");
        assert_eq!(e["code"], 413);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("--max-prompt-bytes"),
            "{e}"
        );
    }
    assert_eq!(stats(), before, "nothing was tokenized");

    // Within the bytes, over the context: vLLM's 400, after tokenizing at most 16 KiB.
    let long = "a ".repeat(8000);
    let (status, e) = common::post_json(&base, "/v1/completions", json!({"prompt": long})).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 2048 tokens"),
        "{e}"
    );
    // Token ids: counted, not converted, when there are too many.
    let ids: Vec<u32> = vec![7; 3000];
    let (status, _) = common::post_json(&base, "/v1/completions", json!({"prompt": ids})).await;
    assert_eq!(status, 400);
    // Still serving.
    let (status, _) = common::post_json(
        &base,
        "/v1/completions",
        json!({"prompt": "still here", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200);
}

async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_blocks_stay_bounded() {
    // 64 blocks of 16; each 100-byte prompt takes 7. A leaked block is never given back, so a
    // few leaks would show as a pool that does not refill.
    let flags = [
        "--dummy-tokenizer",
        "--block-size",
        "16",
        "--num-gpu-blocks",
        "64",
        "--kv-lease-seconds",
        "0.5",
    ];
    let prefill = spawn(SimBuilder::new().flags(flags).flags([
        "--time-scale",
        "0.05",
        "--data-parallel-rank",
        "51",
    ]))
    .await
    .unwrap();
    let decode = spawn(SimBuilder::new().flags(flags).flags([
        "--time-scale",
        "0",
        "--data-parallel-rank",
        "52",
    ]))
    .await
    .unwrap();
    let state = prefill.sim().state.clone();
    let kv = json!({"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null,
                    "remote_block_ids": null, "remote_host": null, "remote_port": null});
    let client = reqwest::Client::new();
    let prefill_leg = |i: usize, id: String| {
        let client = client.clone();
        let url = format!("{}/v1/completions", prefill.url());
        let kv = kv.clone();
        async move {
            let prompt = format!("{i:03} {}", "p".repeat(96));
            let r: serde_json::Value = client
                .post(url)
                .header("x-request-id", id)
                .json(&json!({"prompt": prompt, "max_tokens": 1, "kv_transfer_params": kv}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (prompt, r["kv_transfer_params"].clone())
        }
    };
    for round in 0..3 {
        // Pulled by the decode pod.
        for i in 0..4 {
            let (prompt, params) = prefill_leg(i, format!("pulled-{round}-{i}")).await;
            let (status, e) = common::post_json(
                &decode.url(),
                "/v1/completions",
                json!({"prompt": prompt, "max_tokens": 2, "kv_transfer_params": params}),
            )
            .await;
            assert_eq!(status, 200, "{e}");
        }
        // Never pulled: they expire.
        for i in 4..7 {
            prefill_leg(i, format!("unclaimed-{round}-{i}")).await;
        }
        // The same request id twice: the first lease is replaced, its blocks come back.
        for i in 7..9 {
            prefill_leg(i, format!("reused-{round}")).await;
        }
        // Clients that give up mid-request (a 2,000-token prompt takes ~5 ms of model time
        // per chunk at this scale; the client waits 1 ms).
        for i in 0..3 {
            let _ = client
                .post(format!("{}/v1/completions", prefill.url()))
                .timeout(Duration::from_millis(1))
                .json(
                    &json!({"prompt": format!("{i} {}", "q".repeat(900)), "max_tokens": 50,
                              "kv_transfer_params": kv}),
                )
                .send()
                .await;
        }
        // Everything given back: no lease left, every block free (cached or not).
        wait_for("leases to expire and blocks to return", async || {
            let snap = state.engine.snapshot().await;
            state.nixl.leases() == 0
                && snap.running == 0
                && snap.waiting == 0
                && snap.free_blocks == snap.total_blocks
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_cache_stays_within_its_budget() {
    let Some(tokenizer) = common::llama_tokenizer() else {
        return;
    };
    let sim = spawn(SimBuilder::new().flags([
        "--tokenizer",
        tokenizer.as_str(),
        "--time-scale",
        "0",
        "--prompt-cache-tokens",
        "3000",
        "--data-parallel-rank",
        "53",
    ]))
    .await
    .unwrap();
    for i in 0..60 {
        let prompt: String = (0..150).map(|j| format!("w{i}x{j} ")).collect();
        let (status, _) = common::post_json(
            &sim.url(),
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 1}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let stats = sim.sim().state.tokenizer.prompt_cache_stats().unwrap();
    assert_eq!(stats.misses, 60, "every prompt was new");
    assert!(stats.cached_tokens > 0);
    assert!(
        stats.cached_tokens <= 3000,
        "cached {} tokens, budget 3000",
        stats.cached_tokens
    );
}
