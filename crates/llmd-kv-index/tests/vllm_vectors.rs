//! Every block-hash case of `testdata/vllm-block-hashes.json` (produced by vLLM 0.33's own
//! hashing code) reproduced exactly, and properties of the chain.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use llmd_kv_index::hashing::{BlockKey, RequestExtras, TokensHasher, VllmHasher};
use proptest::prelude::*;

const VECTORS: &str = include_str!("../testdata/vllm-block-hashes.json");

#[test]
fn every_vllm_case_matches() {
    let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    let mut blocks_checked = 0;
    for case in cases {
        let id = case["id"].as_str().unwrap();
        assert_eq!(case["hash_algo"], "sha256_cbor", "{id}");
        let seed = case["python_hash_seed"].as_str();
        let block_size = case["block_size"].as_u64().unwrap() as usize;
        let tokens: Vec<u32> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let hasher = VllmHasher::new(seed, block_size).unwrap();
        assert_eq!(
            hasher.root().to_hex(),
            case["none_hash_hex"].as_str().unwrap(),
            "{id}: NONE_HASH"
        );

        let mut digests = Vec::new();
        hasher.digests_into(None, &tokens, &RequestExtras::default(), &mut digests);
        let expected = case["blocks"].as_array().unwrap();
        assert_eq!(
            digests.len(),
            expected.len(),
            "{id}: only full blocks are hashed"
        );
        let mut keys = Vec::new();
        hasher.keys_into(&tokens, &mut keys);
        for (i, (d, e)) in digests.iter().zip(expected).enumerate() {
            assert_eq!(
                d.to_hex(),
                e["digest_hex"].as_str().unwrap(),
                "{id} block {i}"
            );
            let event_int = e["event_int"]
                .as_u64()
                .or_else(|| e["event_int"].as_str()?.parse().ok())
                .unwrap();
            assert_eq!(d.key(), BlockKey(event_int), "{id} block {i}");
            assert_eq!(keys[i], BlockKey(event_int), "{id} block {i} (keys_into)");
            blocks_checked += 1;
        }
    }
    assert_eq!(blocks_checked, 31);
}

proptest! {
    /// A prompt's keys are a prefix of the keys of any longer prompt that extends it.
    #[test]
    fn keys_are_prefix_stable(
        tokens in prop::collection::vec(0u32..200_000, 0..600),
        extra in prop::collection::vec(0u32..200_000, 0..300),
        block_size in 1usize..80,
        seed in prop::option::of("[a-z0-9]{0,8}"),
    ) {
        let h = VllmHasher::new(seed.as_deref(), block_size).unwrap();
        let mut short = Vec::new();
        h.keys_into(&tokens, &mut short);
        let mut longer_tokens = tokens.clone();
        longer_tokens.extend(&extra);
        let mut long = Vec::new();
        h.keys_into(&longer_tokens, &mut long);
        prop_assert_eq!(short.len(), tokens.len() / block_size);
        prop_assert_eq!(&long[..short.len()], &short[..]);

        let t = TokensHasher::new(seed.as_deref().unwrap_or(""), "m", block_size).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        t.keys_into(None, &tokens, &[], &mut a);
        t.keys_into(None, &longer_tokens, &[], &mut b);
        prop_assert_eq!(&b[..a.len()], &a[..]);
    }

    /// Hashing in pieces, chaining on the last digest, equals hashing at once (as vLLM hashes
    /// incrementally while prompt and output tokens arrive).
    #[test]
    fn incremental_hashing_equals_one_pass(
        tokens in prop::collection::vec(0u32..200_000, 0..400),
        split_blocks in 0usize..8,
        block_size in 1usize..40,
    ) {
        let h = VllmHasher::new(Some("0"), block_size).unwrap();
        let mut all = Vec::new();
        h.digests_into(None, &tokens, &RequestExtras::default(), &mut all);
        let cut = (split_blocks * block_size).min(tokens.len() / block_size * block_size);
        let mut first = Vec::new();
        h.digests_into(None, &tokens[..cut], &RequestExtras::default(), &mut first);
        let mut second = Vec::new();
        h.digests_into(first.last(), &tokens[cut..], &RequestExtras::default(), &mut second);
        first.extend(second);
        prop_assert_eq!(first, all);
    }

    /// Different seeds give different roots, and so different keys.
    #[test]
    fn seeds_separate_chains(a in "[a-z]{1,6}", b in "[a-z]{1,6}") {
        prop_assume!(a != b);
        let tokens: Vec<u32> = (0..64).collect();
        let (mut ka, mut kb) = (Vec::new(), Vec::new());
        VllmHasher::new(Some(&a), 64).unwrap().keys_into(&tokens, &mut ka);
        VllmHasher::new(Some(&b), 64).unwrap().keys_into(&tokens, &mut kb);
        prop_assert_ne!(ka, kb);
    }
}

/// `testdata/vllm-extra-keys.json`: salted and LoRA requests hashed by vLLM 0.33.0's and
/// 0.29.0's own functions (`testdata/gen_extra_key_vectors.py`).
const EXTRA_VECTORS: &str = include_str!("../testdata/vllm-extra-keys.json");

#[test]
fn salt_and_lora_cases_match_vllms_own_hashes_in_both_styles() {
    use llmd_kv_index::hashing::{ExtraKeyStyle, LoraKey};
    let v: serde_json::Value = serde_json::from_str(EXTRA_VECTORS).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let style: ExtraKeyStyle = serde_json::from_value(case["style"].clone()).unwrap();
        let tokens: Vec<u32> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let extras = RequestExtras {
            style,
            lora: case["lora"].as_object().map(|l| LoraKey {
                name: l["name"].as_str().unwrap().into(),
                path: l["path"].as_str().unwrap().into(),
            }),
            mm_items: vec![],
            cache_salt: case["cache_salt"].as_str().map(str::to_owned),
        };
        let hasher = VllmHasher::new(case["python_hash_seed"].as_str(), 16).unwrap();
        let want: Vec<BlockKey> = case["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| BlockKey(b["event_int"].as_u64().unwrap()))
            .collect();
        assert_eq!(want.len(), 3, "{id}");
        assert_eq!(hasher.keys(&tokens, &extras), want, "{id}");
    }
}
