//! The byte-level BPE fast path gives exactly HF `tokenizers`' ids, for Llama-3.1 and Qwen3:
//! on random strings built from unicode, ASCII, whitespace, digits, contractions, special
//! tokens and NFC-sensitive sequences (proptest); on every code point of Unicode, in runs;
//! on the golden prompts and chat renderings; with and without `add_special_tokens`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use llmd_tokenizer::{ChatRequest, ModelTokenizer};
use proptest::prelude::*;
use serde_json::Value;

const GOLDEN: &str = include_str!("../testdata/tokenizer_golden.json");
const MODELS: [&str; 2] = ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-0.6B"];

fn hf(tok: &ModelTokenizer, text: &str, add_special: bool) -> Vec<u32> {
    tok.inner()
        .encode_fast(text, add_special)
        .unwrap()
        .get_ids()
        .to_vec()
}

/// Both models, loaded once per test binary.
fn models() -> &'static [ModelTokenizer] {
    static MODELS_LOADED: std::sync::OnceLock<Vec<ModelTokenizer>> = std::sync::OnceLock::new();
    MODELS_LOADED.get_or_init(|| {
        MODELS
            .iter()
            .filter_map(|m| common::real_tokenizer(m))
            .collect()
    })
}

/// Asserts fast == HF for `text`, both ways of `add_special_tokens`.
fn check(tok: &ModelTokenizer, text: &str) -> Result<(), TestCaseError> {
    let fast = tok.fast_path().unwrap();
    for add in [false, true] {
        prop_assert_eq!(
            fast.encode(text, add),
            hf(tok, text, add),
            "{}: add_special_tokens={} text={:?}",
            tok.name(),
            add,
            text
        );
    }
    Ok(())
}

#[test]
fn both_models_get_the_fast_path() {
    for tok in models() {
        assert!(
            tok.fast_path().is_some(),
            "{}: {:?}",
            tok.name(),
            tok.fast_path_unsupported()
        );
    }
}

#[test]
fn golden_prompts_and_chat_renderings() {
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    let mut checked = 0;
    for tok in models() {
        let g = &golden[tok.name()];
        for case in g["completions"].as_array().unwrap() {
            check(tok, case["prompt"].as_str().unwrap()).unwrap();
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(
                tok.encode_completion(case["prompt"].as_str().unwrap())
                    .unwrap(),
                want
            );
            checked += 1;
        }
        for case in g["chats"].as_array().unwrap() {
            let request = ChatRequest::from_openai_body(&case["request"]).unwrap();
            let text = tok.render_chat(&request).unwrap();
            check(tok, &text).unwrap();
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tok.encode_chat(&request).unwrap(), want);
            checked += 1;
        }
    }
    if models().len() == 2 {
        assert_eq!(checked, 2 * 9 + 4 + 7);
    }
}

/// Every Unicode scalar value, in runs of 512 consecutive code points with a separator mix
/// between them, so each character is seen next to its neighbours, after a space, and before
/// an apostrophe and a digit.
#[test]
fn every_code_point() {
    for tok in models() {
        let chars: Vec<char> = (0..=char::MAX as u32).filter_map(char::from_u32).collect();
        for (i, run) in chars.chunks(512).enumerate() {
            let mut text = String::with_capacity(run.len() * 6);
            for (j, c) in run.iter().enumerate() {
                text.push(*c);
                match (i + j) % 7 {
                    0 => text.push(' '),
                    2 => text.push('\''),
                    4 => text.push_str(" 1"),
                    _ => {}
                }
            }
            check(tok, &text).unwrap();
        }
    }
}

/// Pieces of text that stress the pre-tokenizer, the normalizer and the added-token split.
fn piece(specials: Vec<String>) -> impl Strategy<Value = String> {
    const FIXED: &[&str] = &[
        // Contractions, including case folding beyond ASCII.
        "'s",
        "'S",
        "'t",
        "'re",
        "'RE",
        "'Ve",
        "'m",
        "'ll",
        "'LL",
        "'d",
        "'ſ",
        "'K",
        "'x",
        "''",
        "don't",
        "I'M",
        "'",
        // Whitespace of every kind.
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\n\n",
        "\r",
        "\u{0b}",
        "\u{0c}",
        "\u{85}",
        "\u{a0}",
        "\u{2000}",
        "\u{2028}",
        "\u{3000}",
        "\u{200b}",
        " \n ",
        "\t\n",
        // Numbers, ASCII and not.
        "1",
        "12",
        "123",
        "1234567",
        "3.14",
        "٣٤٥",
        "½",
        "Ⅻ",
        "१२३",
        "①",
        // Words and scripts.
        "hello",
        " world",
        "naïve",
        "東京",
        "日本語",
        "🚀",
        "👩‍👩‍👧",
        "Ελληνικά",
        "עברית",
        "ﬆ",
        // Combining sequences that NFC changes (Qwen's normalizer).
        "e\u{301}",
        "\u{1e0b}\u{323}",
        "\u{1100}\u{1161}\u{11a8}",
        "\u{212b}",
        "\u{2126}",
        "a\u{308}\u{301}",
        "\u{0344}",
        // Punctuation and code.
        "!",
        "...",
        "?!\n",
        "{",
        "}",
        "()",
        "=>",
        "->",
        "#",
        "<",
        "|>",
        "<|",
        "\"",
        "```",
        // Fragments of special tokens.
        "<|eot_id",
        "<|im_start",
        "<think",
        "|",
        "<|begin_of_text|",
        "</",
    ];
    let fixed: Vec<String> = FIXED.iter().map(|s| (*s).to_owned()).collect();
    prop_oneof![
        4 => proptest::sample::select(fixed),
        2 => proptest::sample::select(specials),
        3 => "[ -~]{1,12}",                 // printable ASCII
        3 => any::<char>().prop_map(String::from),
        1 => "\\PC{1,8}",                   // any non-control unicode
        1 => "[ \t\r\n\u{0b}\u{0c}\u{a0}]{1,6}",
        // Long runs: BPE over pieces past the short-piece limit (heap merging).
        1 => ("[a-zA-Z]", 40usize..300).prop_map(|(c, n)| c.repeat(n)),
        1 => "[a-z]{50,200}",
        1 => "[!-/]{30,120}",
        1 => "[ ]{2,80}",
    ]
}

fn text(specials: Vec<String>) -> impl Strategy<Value = String> {
    proptest::collection::vec(piece(specials), 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn fast_path_equals_hf_on_random_text(
        llama in text(specials(0)),
        qwen in text(specials(1)),
    ) {
        let models = models();
        if models.len() == 2 {
            check(&models[0], &llama)?;
            check(&models[1], &qwen)?;
            // Each model also on the other's special tokens (plain text to it).
            check(&models[0], &qwen)?;
            check(&models[1], &llama)?;
        }
    }
}

/// The model's added tokens, as text (read from its `tokenizer.json`).
fn specials(model: usize) -> Vec<String> {
    let Some(tok) = models().get(model) else {
        return vec!["<|eot_id|>".to_owned()];
    };
    let mut out: Vec<String> = tok
        .inner()
        .get_added_tokens_decoder()
        .values()
        .map(|t| t.content.clone())
        .collect();
    out.sort();
    out
}

#[test]
fn long_documents_and_offsets_for_the_prompt_cache() {
    for tok in models() {
        let mut doc = String::new();
        for i in 0..3000 {
            doc.push_str(
                [
                    "The ",
                    "prefix ",
                    "cache's ",
                    "東京 ",
                    "x=1;\n",
                    "\t",
                    "42 ",
                    "<|im_end|>",
                    "<|eot_id|>",
                    "naïve ",
                ][i % 10],
            );
            if i % 97 == 0 {
                doc.push_str("\n\n");
            }
        }
        check(tok, &doc).unwrap();
        // The prompt cache resumes through the fast path's offsets: same ids either way.
        let cache = llmd_tokenizer::PromptCache::new(100_000, 64);
        for cut in [1000, 2000, doc.len()] {
            let mut cut = cut;
            while !doc.is_char_boundary(cut) {
                cut -= 1;
            }
            for add in [true, false] {
                assert_eq!(
                    cache.encode(tok, &doc[..cut], add).unwrap(),
                    hf(tok, &doc[..cut], add)
                );
            }
        }
    }
}
