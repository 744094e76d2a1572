//! Which picks the scheduler lets run on the ext_proc stream's own task
//! (`Picker::picks_inline`): bodyless requests and completions prompts of at most
//! `INLINE_PICK_MAX_PROMPT_BYTES` whose tokenizer is loaded. Longer prompts, chat requests
//! (templates) and a first request that would load a tokenizer from disk go to the blocking
//! pool (`picks_off_runtime.rs` holds the pool's side).

#![allow(clippy::unwrap_used)] // test setup: a failed unwrap is a failed test

use std::sync::Arc;

use llmd_epp::config::{EndpointPickerConfig, ROUND_ROBIN_CONFIG};
use llmd_epp::endpoints::Pool;
use llmd_epp::request::{InferenceRequest, parse};
use llmd_epp::scheduling::scheduler::INLINE_PICK_MAX_PROMPT_BYTES;
use llmd_epp::scheduling::{Picker, Scheduler};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn completion(prompt_bytes: usize) -> InferenceRequest {
    let body = serde_json::json!({"model": MODEL, "prompt": "x".repeat(prompt_bytes)});
    parse("/v1/completions", &serde_json::to_vec(&body).unwrap()).unwrap()
}

#[test]
fn small_completions_run_inline_long_prompts_and_chat_do_not() {
    let rr = Scheduler::from_config(
        &EndpointPickerConfig::parse(ROUND_ROBIN_CONFIG).unwrap(),
        Arc::new(Pool::default()),
    )
    .unwrap();
    assert!(rr.picks_inline(None), "bodyless");
    assert!(rr.picks_inline(Some(&completion(100))));
    assert!(rr.picks_inline(Some(&completion(INLINE_PICK_MAX_PROMPT_BYTES))));
    assert!(!rr.picks_inline(Some(&completion(INLINE_PICK_MAX_PROMPT_BYTES + 1))));
    let chat = parse(
        "/v1/chat/completions",
        br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#,
    )
    .unwrap();
    assert!(!rr.picks_inline(Some(&chat)), "chat templates stay off");
}

#[test]
fn a_precise_pick_runs_inline_only_once_its_tokenizer_is_loaded() {
    let Some(tok) = llmd_testkit::tokenizer::tokenizer_dir(MODEL) else {
        return;
    };
    let yaml = format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{tokenizer: "{tok}"}}
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {{pluginRef: precise-prefix-cache-scorer}}
      - {{pluginRef: max-score-picker}}
"#
    );
    let precise = Scheduler::from_config(
        &EndpointPickerConfig::parse(&yaml).unwrap(),
        Arc::new(Pool::default()),
    )
    .unwrap();
    let small = completion(100);
    assert!(
        !precise.picks_inline(Some(&small)),
        "loading the tokenizer reads files: not on the runtime"
    );
    precise.kv().unwrap().preload();
    assert!(precise.picks_inline(Some(&small)));
    assert!(!precise.picks_inline(Some(&completion(INLINE_PICK_MAX_PROMPT_BYTES + 1))));
}
