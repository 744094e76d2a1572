//! The real Python `openai` client drives completions and chat, streaming and not, against a
//! simulator with the real Llama-3.1 tokenizer, and gets well-formed answers and usage.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use serde_json::Value;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_gets_well_formed_answers() {
    let (Some(python), Some(tok)) = (llmd_testkit::peers::python(), common::llama_tokenizer())
    else {
        return;
    };
    let (sim, shutdown) = common::start(&[
        "--model",
        MODEL,
        "--tokenizer",
        &tok,
        "--time-scale",
        "0",
        "--served-model-name",
        "llama",
    ])
    .await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let base = format!("http://{}", sim.addr);
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&base)
        .arg(MODEL)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(v["models"], serde_json::json!([MODEL, "llama"]));
    let c = &v["completion"];
    assert!(c["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(c["finish"], "length");
    assert_eq!(c["text"], "The quick brown fox jumps");
    let llama =
        llmd_tokenizer::ModelTokenizer::from_dir(MODEL, std::path::Path::new(&tok)).unwrap();
    let prompt_tokens = llama
        .encode_completion("The simulator answers")
        .unwrap()
        .len();
    assert_eq!(c["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(c["usage"]["completion_tokens"], 5);
    assert_eq!(c["usage"]["total_tokens"], prompt_tokens + 5);
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    let s = &v["completion_stream"];
    assert_eq!(s["texts"].as_array().unwrap().len(), 4);
    assert_eq!(
        s["finishes"],
        serde_json::json!([null, null, null, "length"])
    );
    assert_eq!(
        s["usage"].as_array().unwrap().len(),
        1,
        "usage once, after the last choice"
    );
    assert_eq!(s["usage"][0]["completion_tokens"], 4);

    let chat = &v["chat"];
    assert!(chat["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(chat["role"], "assistant");
    assert_eq!(chat["finish"], "length");
    assert_eq!(chat["usage"]["completion_tokens"], 6);
    let messages = serde_json::json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]});
    let chat_tokens = llama
        .encode_chat(&llmd_tokenizer::ChatRequest::from_openai_body(&messages).unwrap())
        .unwrap()
        .len();
    assert_eq!(chat["usage"]["prompt_tokens"], chat_tokens);

    let cs = &v["chat_stream"];
    assert_eq!(cs["roles"][0], "assistant", "first chunk carries the role");
    assert_eq!(cs["finishes"].as_array().unwrap().last().unwrap(), "length");
    assert_eq!(cs["usage"][0]["completion_tokens"], 3);

    assert_eq!(v["unknown_model"]["status"], 404);
    assert_eq!(v["zero_max_tokens"]["status"], 400);
    shutdown.cancel();
}
