//! The byte-level BPE fast path: the same ids as HF `tokenizers`, in a fraction of the time,
//! for tokenizers of the Llama-3 / Qwen2-3 kind.
//!
//! HF encodes in five steps; this module does each the same way with less machinery:
//!
//! | HF step | here |
//! |---|---|
//! | added tokens split out of the raw text (Aho-Corasick, leftmost-longest) | the same automaton (`daachorse`, as HF) over the same tokens |
//! | normalizer on the text between them (Qwen: NFC) | skipped when the text is ASCII or NFC by quick check, else HF's own NFC |
//! | `Split` pre-tokenizer (Oniguruma regex), then `ByteLevel` | [`pretok`]: a matcher for the two known patterns, character classes read out of the same regex engine ([`classes`]); bytes stay bytes |
//! | BPE model on each piece (word cache, symbols as byte-level chars) | [`bpe`]: HF's merge rules on raw bytes |
//! | post-processor (`TemplateProcessing`: Llama's BOS) | the template's fixed prefix and suffix ids |
//!
//! [`FastBpe::from_json`] accepts a `tokenizer.json` only when every step is one it reproduces
//! exactly, and says why not otherwise (the tokenizer then runs on HF alone).

mod bpe;
mod classes;
mod pretok;

use daachorse::{DoubleArrayAhoCorasick, DoubleArrayAhoCorasickBuilder, MatchKind};
use serde_json::Value as Json;
use unicode_normalization_alignments::{IsNormalized, is_nfc_quick};

use self::bpe::Bpe;
use self::classes::Classes;
use self::pretok::{PATTERNS, PreTokenizer};
use crate::IdsAndOffsets;

/// Why a `tokenizer.json` gets no fast path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no fast path: {0}")]
pub struct Unsupported(String);

impl Unsupported {
    pub(crate) fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

fn unsupported<T>(why: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported::new(why))
}

/// A byte-level BPE tokenizer giving the ids HF `tokenizers` gives for the same file.
pub struct FastBpe {
    pretok: PreTokenizer,
    bpe: Bpe,
    /// Added tokens (special or not), matched in the raw text.
    added: Option<DoubleArrayAhoCorasick<u32>>,
    /// The normalizer is NFC (else there is none).
    nfc: bool,
    /// `add_special_tokens`: ids before and after the text (the post-processor's template).
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

impl std::fmt::Debug for FastBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastBpe")
            .field("bpe", &self.bpe)
            .field("max_digits", &self.pretok.max_digits)
            .field("nfc", &self.nfc)
            .field("prefix", &self.prefix)
            .field("suffix", &self.suffix)
            .finish()
    }
}

/// A stretch of the input: an added token, or text between added tokens.
enum Segment<'a> {
    Added(u32, usize, usize),
    Text(&'a str, usize),
}

impl FastBpe {
    /// Builds the fast path for a parsed `tokenizer.json`, or says which part of it this
    /// module does not reproduce.
    pub fn from_json(json: &Json) -> Result<Self, Unsupported> {
        for key in ["truncation", "padding"] {
            if !json[key].is_null() {
                return unsupported(format!("{key} is set"));
            }
        }
        let nfc = match &json["normalizer"] {
            Json::Null => false,
            n if n["type"] == "NFC" => true,
            n => return unsupported(format!("normalizer {}", n["type"])),
        };
        let max_digits = pre_tokenizer(&json["pre_tokenizer"])?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return unsupported(format!("model {}", model["type"]));
        }
        if !model["dropout"].is_null() || model["byte_fallback"] == true {
            return unsupported("BPE dropout or byte fallback");
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if !matches!(&model[key], Json::Null) && model[key] != "" {
                return unsupported(format!("BPE {key}"));
            }
        }
        let (Some(vocab), Some(merges)) = (model["vocab"].as_object(), model["merges"].as_array())
        else {
            return unsupported("BPE without vocab or merges");
        };
        let ignore_merges = model["ignore_merges"] == true;
        let mut bpe = Bpe::new(vocab, merges, ignore_merges).map_err(Unsupported)?;

        let mut added = Vec::new();
        for t in json["added_tokens"].as_array().into_iter().flatten() {
            let (Some(content), Some(id)) = (
                t["content"].as_str(),
                t["id"].as_u64().and_then(|i| u32::try_from(i).ok()),
            ) else {
                return unsupported(format!("added token {t}"));
            };
            for flag in ["lstrip", "rstrip", "single_word", "normalized"] {
                if t[flag] == true {
                    return unsupported(format!("added token {content:?} has {flag}"));
                }
            }
            bpe.set_token_len(id, content.len());
            added.push((content.to_owned(), id));
        }
        let added = if added.is_empty() {
            None
        } else {
            Some(
                DoubleArrayAhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build_with_values(added)
                    .map_err(|e| Unsupported(format!("added tokens: {e}")))?,
            )
        };
        let (prefix, suffix) = post_processor(&json["post_processor"])?;
        let classes = Classes::get().map_err(Unsupported)?;
        Ok(Self {
            pretok: PreTokenizer {
                classes,
                max_digits,
            },
            bpe,
            added,
            nfc,
            prefix,
            suffix,
        })
    }

    /// Token ids of `text`, as HF's `encode(text, add_special_tokens)` gives them.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 4 + 4);
        if add_special_tokens {
            ids.extend_from_slice(&self.prefix);
        }
        self.segments(text, |seg| match seg {
            Segment::Added(id, _, _) => ids.push(id),
            Segment::Text(s, _) => match self.normalized(s) {
                Some(n) => self.encode_text(&n, &mut ids),
                None => self.encode_text(s, &mut ids),
            },
        });
        if add_special_tokens {
            ids.extend_from_slice(&self.suffix);
        }
        ids
    }

    /// Token ids and the byte range of each in `text` (template tokens get `(0, 0)`), or
    /// `None` when normalization changed the text (offsets would need HF's alignments).
    pub(crate) fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Option<IdsAndOffsets> {
        let mut ids = Vec::with_capacity(text.len() / 4 + 4);
        let mut offsets = Vec::with_capacity(ids.capacity());
        if add_special_tokens {
            ids.extend_from_slice(&self.prefix);
            offsets.resize(ids.len(), (0, 0));
        }
        let mut changed = false;
        self.segments(text, |seg| match seg {
            Segment::Added(id, start, end) => {
                ids.push(id);
                offsets.push((start, end));
            }
            Segment::Text(s, base) => {
                if self.normalized(s).is_some() {
                    changed = true;
                    return;
                }
                self.pretok.split(s, |start, end| {
                    let n = ids.len();
                    self.bpe.encode_piece(&s.as_bytes()[start..end], &mut ids);
                    let mut at = base + start;
                    for id in &ids[n..] {
                        let len = self.bpe.token_len.get(*id as usize).copied().unwrap_or(0);
                        offsets.push((at, at + len as usize));
                        at += len as usize;
                    }
                });
            }
        });
        if changed {
            return None;
        }
        if add_special_tokens {
            ids.extend_from_slice(&self.suffix);
            offsets.resize(ids.len(), (0, 0));
        }
        Some((ids, offsets))
    }

    /// Calls `f` with the added tokens and the text between them, in order.
    fn segments<'a>(&self, text: &'a str, mut f: impl FnMut(Segment<'a>)) {
        let mut at = 0;
        if let Some(added) = &self.added {
            for m in added.leftmost_find_iter(text) {
                if m.start() > at {
                    f(Segment::Text(&text[at..m.start()], at));
                }
                f(Segment::Added(m.value(), m.start(), m.end()));
                at = m.end();
            }
        }
        if at < text.len() {
            f(Segment::Text(&text[at..], at));
        }
    }

    /// The NFC form of `s` when the normalizer is NFC and it differs (`None`: use `s`).
    fn normalized(&self, s: &str) -> Option<String> {
        if !self.nfc || s.is_ascii() || is_nfc_quick(s.chars()) == IsNormalized::Yes {
            return None;
        }
        use tokenizers::Normalizer as _;
        let mut n = tokenizers::NormalizedString::from(s);
        // HF's own NFC (same Unicode tables); it cannot fail.
        tokenizers::normalizers::unicode::NFC
            .normalize(&mut n)
            .ok()?;
        (n.get() != s).then(|| n.get().to_owned())
    }

    /// Pre-tokenizes and merges `s`.
    fn encode_text(&self, s: &str, ids: &mut Vec<u32>) {
        self.pretok.split(s, |start, end| {
            self.bpe.encode_piece(&s.as_bytes()[start..end], ids)
        });
    }
}

/// `Sequence[Split(<known pattern>, Isolated), ByteLevel(no prefix space, no regex)]`: the
/// longest digit run of the pattern.
fn pre_tokenizer(p: &Json) -> Result<usize, Unsupported> {
    let steps = match p["type"].as_str() {
        Some("Sequence") => p["pretokenizers"].as_array().cloned().unwrap_or_default(),
        _ => return unsupported(format!("pre-tokenizer {}", p["type"])),
    };
    let [split, byte_level] = steps.as_slice() else {
        return unsupported("pre-tokenizer is not Split then ByteLevel");
    };
    if split["type"] != "Split" || split["behavior"] != "Isolated" || split["invert"] == true {
        return unsupported("pre-tokenizer is not an isolating Split");
    }
    let Some(pattern) = split["pattern"]["Regex"].as_str() else {
        return unsupported("Split pattern is not a regex");
    };
    let Some((_, max_digits)) = PATTERNS.iter().find(|(p, _)| *p == pattern) else {
        return unsupported(format!("Split regex {pattern:?}"));
    };
    if byte_level["type"] != "ByteLevel"
        || byte_level["add_prefix_space"] == true
        || byte_level["use_regex"] != false
    {
        return unsupported("ByteLevel with a prefix space or its own regex");
    }
    Ok(*max_digits)
}

/// The ids `add_special_tokens` puts before and after the text: no post-processor,
/// `ByteLevel` (offsets only), `TemplateProcessing` with a `single` template of special
/// tokens around `$A`, or a `Sequence` of these.
fn post_processor(p: &Json) -> Result<(Vec<u32>, Vec<u32>), Unsupported> {
    let steps: Vec<&Json> = match p["type"].as_str() {
        None if p.is_null() => Vec::new(),
        Some("Sequence") => p["processors"].as_array().into_iter().flatten().collect(),
        _ => vec![p],
    };
    let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
    let mut templates = 0;
    for step in steps {
        match step["type"].as_str() {
            Some("ByteLevel") => {}
            Some("TemplateProcessing") => {
                templates += 1;
                let mut seen_sequence = false;
                for item in step["single"].as_array().into_iter().flatten() {
                    if item.get("Sequence").is_some() {
                        if seen_sequence {
                            return unsupported("template with two sequences");
                        }
                        seen_sequence = true;
                        continue;
                    }
                    let Some(name) = item["SpecialToken"]["id"].as_str() else {
                        return unsupported(format!("template item {item}"));
                    };
                    let ids: Vec<u32> = step["special_tokens"][name]["ids"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.as_u64().and_then(|i| u32::try_from(i).ok()))
                        .collect();
                    if ids.is_empty() {
                        return unsupported(format!("template token {name:?} has no ids"));
                    }
                    if seen_sequence {
                        suffix.extend(ids);
                    } else {
                        prefix.extend(ids);
                    }
                }
                if !seen_sequence {
                    return unsupported("template without the sequence");
                }
            }
            _ => return unsupported(format!("post-processor {}", step["type"])),
        }
    }
    if templates > 1 {
        return unsupported("two templates");
    }
    Ok((prefix, suffix))
}
