//! Where prompts come from: synthetic prompts of a length in *tokens* (the model's tokenizer via
//! `llmd-tokenizer`, or bytes for servers run with a byte tokenizer such as `llmd sim
//! --dummy-tokenizer`), shared-prefix groups, ShareGPT files, and Mooncake-format traces.

use std::path::Path;
use std::sync::Arc;

use llmd_tokenizer::ModelTokenizer;
use rand::Rng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Errors reading or building a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Bad parameters.
    #[error("{0}")]
    Invalid(String),
}

/// Turns a token count into text of that many tokens.
#[derive(Clone)]
pub enum PromptMaker {
    /// One byte per token (servers with a byte tokenizer).
    Bytes,
    /// The model's tokenizer.
    Model(Arc<ModelTokenizer>),
}

impl std::fmt::Debug for PromptMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromptMaker::Bytes => f.write_str("PromptMaker::Bytes"),
            PromptMaker::Model(t) => write!(f, "PromptMaker::Model({})", t.name()),
        }
    }
}

const WORDS: &[&str] = &[
    "the", "prefill", "decode", "cache", "block", "token", "router", "model", "serving", "latency",
    "request", "stream", "answer", "question", "river", "mountain", "garden", "window", "engine",
    "signal", "paper", "silver", "orange", "number", "little", "bright", "quiet", "morning",
    "system", "between", "through", "without", "network", "memory", "kernel", "vector",
];

impl PromptMaker {
    /// The model's tokenizer (`model` name or path, as `llmd kv` finds it), or bytes.
    pub fn load(model: Option<&str>) -> Result<Self, DatasetError> {
        match model {
            None => Ok(PromptMaker::Bytes),
            Some(m) => ModelTokenizer::load(m)
                .map(|t| PromptMaker::Model(Arc::new(t)))
                .map_err(|e| DatasetError::Tokenizer(e.to_string())),
        }
    }

    /// Tokens of `text` (no special tokens).
    pub fn count(&self, text: &str) -> u32 {
        let n = match self {
            PromptMaker::Bytes => text.len(),
            PromptMaker::Model(t) => t.encode(text, false).map(|ids| ids.len()).unwrap_or(0),
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Random words of `n` tokens; returns the text and its token count (exact for bytes;
    /// within a token or two for a model tokenizer, as re-tokenizing joined words can merge).
    pub fn make(&self, n: u32, rng: &mut SmallRng) -> (String, u32) {
        let n = n as usize;
        match self {
            PromptMaker::Bytes => {
                let mut s = String::with_capacity(n + 16);
                while s.len() < n {
                    if !s.is_empty() {
                        s.push(' ');
                    }
                    s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
                }
                s.truncate(n);
                let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                (s, len)
            }
            PromptMaker::Model(t) => {
                // Common words are one token each in every modern vocabulary; build a little
                // over n, then cut at exactly n tokens and decode back.
                let mut s = String::with_capacity(n * 7);
                for i in 0..n + n / 8 + 2 {
                    if i > 0 {
                        s.push(' ');
                    }
                    s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
                }
                let ids = t.encode(&s, false).unwrap_or_default();
                let cut = &ids[..ids.len().min(n)];
                let text = t.inner().decode(cut, true).unwrap_or_default();
                let count = self.count(&text);
                (text, count)
            }
        }
    }
}

/// A length distribution in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lengths {
    /// Always this many.
    Fixed {
        /// Tokens.
        n: u32,
    },
    /// Uniform in `[min, max]`.
    Uniform {
        /// Smallest.
        min: u32,
        /// Largest.
        max: u32,
    },
    /// Normal, clamped to `[min, max]`.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
        /// Smallest.
        min: u32,
        /// Largest.
        max: u32,
    },
}

impl Lengths {
    /// Parses `N`, `MIN-MAX` or `MEAN±STD` (also `MEAN+-STD`); clamped to 1..=`limit`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected N, MIN-MAX or MEAN+-STD (tokens)");
        let s = s.trim();
        if let Some((m, d)) = s.split_once("+-").or_else(|| s.split_once('±')) {
            let mean: f64 = m.trim().parse().map_err(|_| bad())?;
            let std: f64 = d.trim().parse().map_err(|_| bad())?;
            if !(mean >= 1.0 && std >= 0.0 && mean.is_finite() && std.is_finite()) {
                return Err(bad());
            }
            let max = (mean + 4.0 * std).ceil() as u32;
            return Ok(Lengths::Normal {
                mean,
                std,
                min: 1,
                max: max.max(1),
            });
        }
        if let Some((a, b)) = s.split_once('-') {
            let min: u32 = a.trim().parse().map_err(|_| bad())?;
            let max: u32 = b.trim().parse().map_err(|_| bad())?;
            if min == 0 || max < min {
                return Err(bad());
            }
            return Ok(Lengths::Uniform { min, max });
        }
        let n: u32 = s.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        Ok(Lengths::Fixed { n })
    }

    /// One draw.
    pub fn sample(&self, rng: &mut SmallRng) -> u32 {
        match *self {
            Lengths::Fixed { n } => n,
            Lengths::Uniform { min, max } => rng.random_range(min..=max),
            Lengths::Normal {
                mean,
                std,
                min,
                max,
            } => {
                let x = Normal::new(mean, std.max(1e-9))
                    .map(|d| d.sample(rng))
                    .unwrap_or(mean);
                (x.round().max(f64::from(min)) as u32).min(max)
            }
        }
    }
}

/// One prompt of a dataset (before it becomes a request).
#[derive(Debug, Clone)]
pub struct Item {
    /// Group name (results are grouped by it).
    pub group: Arc<str>,
    /// Text.
    pub prompt: String,
    /// Its tokens.
    pub input_tokens: u32,
    /// `max_tokens`.
    pub output_tokens: u32,
    /// Send at this offset from the start (trace replay), ms.
    pub at_ms: Option<f64>,
}

/// A source of prompts.
#[derive(Debug, Clone)]
pub enum Dataset {
    /// Fresh random prompts.
    Synthetic {
        /// Prompt lengths.
        input: Lengths,
        /// Output lengths.
        output: Lengths,
        /// Text maker.
        maker: PromptMaker,
    },
    /// Prebuilt prompts, cycled (shared-prefix groups, ShareGPT, traces).
    Items(Arc<Vec<Item>>),
}

impl Dataset {
    /// The `i`-th item.
    pub fn item(&self, i: u64, rng: &mut SmallRng) -> Item {
        match self {
            Dataset::Synthetic {
                input,
                output,
                maker,
            } => {
                let (prompt, input_tokens) = maker.make(input.sample(rng), rng);
                Item {
                    group: Arc::from("synthetic"),
                    prompt,
                    input_tokens,
                    output_tokens: output.sample(rng),
                    at_ms: None,
                }
            }
            Dataset::Items(items) => {
                let n = items.len().max(1) as u64;
                items
                    .get((i % n) as usize)
                    .cloned()
                    .unwrap_or_else(|| Item {
                        group: Arc::from("empty"),
                        prompt: String::new(),
                        input_tokens: 0,
                        output_tokens: 1,
                        at_ms: None,
                    })
            }
        }
    }

    /// Number of prebuilt items (None: unbounded synthetic).
    pub fn len(&self) -> Option<usize> {
        match self {
            Dataset::Synthetic { .. } => None,
            Dataset::Items(items) => Some(items.len()),
        }
    }

    /// True when a prebuilt dataset has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// `groups` prefixes of `prefix_len` tokens, each with `per_group` suffixes of
    /// `suffix_len` tokens (the precise-prefix-cache workload), in group-interleaved order:
    /// request i uses group i % groups, so every group's prefix recurs regularly.
    pub fn shared_prefix(
        maker: &PromptMaker,
        groups: u32,
        per_group: u32,
        prefix_len: u32,
        suffix_len: u32,
        output: u32,
        rng: &mut SmallRng,
    ) -> Result<Self, DatasetError> {
        if groups == 0 || per_group == 0 {
            return Err(DatasetError::Invalid(
                "shared-prefix needs at least one group and one prompt per group".into(),
            ));
        }
        let prefixes: Vec<(String, u32)> =
            (0..groups).map(|_| maker.make(prefix_len, rng)).collect();
        let mut items = Vec::with_capacity((groups * per_group) as usize);
        for m in 0..per_group {
            for (g, (prefix, plen)) in prefixes.iter().enumerate() {
                let (suffix, slen) = maker.make(suffix_len, rng);
                let _ = m;
                items.push(Item {
                    group: Arc::from(format!("prefix-{g}")),
                    prompt: format!("{prefix} {suffix}"),
                    input_tokens: plen + slen + 1,
                    output_tokens: output,
                    at_ms: None,
                });
            }
        }
        Ok(Dataset::Items(Arc::new(items)))
    }

    /// A ShareGPT-format JSON file (`[{"conversations": [{"from": "human", "value": ...},
    /// {"from": "gpt", "value": ...}]}]`): the first human turn is the prompt, the length of
    /// the answer that follows is `max_tokens`; pairs under 4 tokens either way are skipped,
    /// as `vllm bench serve` does.
    pub fn sharegpt(path: &Path, maker: &PromptMaker, limit: usize) -> Result<Self, DatasetError> {
        let file_err = |why: String| DatasetError::File {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
        let v: Value = serde_json::from_slice(&text).map_err(|e| file_err(e.to_string()))?;
        let convs = v
            .as_array()
            .ok_or_else(|| file_err("not a JSON array of conversations".into()))?;
        let mut items = Vec::new();
        for c in convs {
            if items.len() >= limit {
                break;
            }
            let Some(turns) = c.get("conversations").and_then(Value::as_array) else {
                continue;
            };
            let value = |t: &Value| t.get("value").and_then(Value::as_str).map(str::to_owned);
            fn from(t: &Value) -> &str {
                t.get("from").and_then(Value::as_str).unwrap_or("")
            }
            let Some(pos) = turns.iter().position(|t| from(t) == "human") else {
                continue;
            };
            let (Some(prompt), Some(answer)) = (
                turns.get(pos).and_then(value),
                turns
                    .get(pos + 1)
                    .filter(|t| from(t) == "gpt")
                    .and_then(value),
            ) else {
                continue;
            };
            let (pin, pout) = (maker.count(&prompt), maker.count(&answer));
            if pin < 4 || pout < 4 {
                continue;
            }
            items.push(Item {
                group: Arc::from("sharegpt"),
                prompt,
                input_tokens: pin,
                output_tokens: pout,
                at_ms: None,
            });
        }
        if items.is_empty() {
            return Err(file_err(
                "no usable conversation (human turn + gpt answer)".into(),
            ));
        }
        Ok(Dataset::Items(Arc::new(items)))
    }

    /// A Mooncake-format trace (JSONL: `{"timestamp": ms, "input_length": n,
    /// "output_length": m, "hash_ids": [..]}`): each hash id stands for one block of
    /// `block_tokens` tokens of the same text wherever it recurs, so shared ids are shared
    /// prefixes; the last block is cut to `input_length`. Requests are sent at their
    /// timestamps divided by `speedup`.
    pub fn mooncake(
        path: &Path,
        maker: &PromptMaker,
        block_tokens: u32,
        speedup: f64,
        limit: usize,
    ) -> Result<Self, DatasetError> {
        let file_err = |why: String| DatasetError::File {
            path: path.display().to_string(),
            why,
        };
        if !(speedup > 0.0 && speedup.is_finite()) || block_tokens == 0 {
            return Err(DatasetError::Invalid(
                "trace speed-up must be > 0 and the block size > 0".into(),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let mut blocks: std::collections::HashMap<u64, String> = Default::default();
        let mut rng = <SmallRng as rand::SeedableRng>::seed_from_u64(7);
        let mut items = Vec::new();
        let mut first_ts: Option<f64> = None;
        for (n, line) in text.lines().enumerate() {
            if items.len() >= limit {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(line).map_err(|e| file_err(format!("line {}: {e}", n + 1)))?;
            let field = |k: &str| {
                v.get(k)
                    .and_then(Value::as_f64)
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| file_err(format!("line {}: no valid {k:?}", n + 1)))
            };
            let ts = field("timestamp")?;
            let input = field("input_length")? as u32;
            let output = (field("output_length")? as u32).max(1);
            let ids: Vec<u64> = v
                .get("hash_ids")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            let mut prompt = String::new();
            let mut tokens = 0u32;
            for id in &ids {
                if tokens >= input {
                    break;
                }
                let block = blocks
                    .entry(*id)
                    .or_insert_with(|| maker.make(block_tokens, &mut rng).0);
                let want = (input - tokens).min(block_tokens);
                // Blocks are joined as they are: a separator would be one more token each.
                if want == block_tokens {
                    prompt.push_str(block);
                } else {
                    // A partial last block: fresh text of the remaining length.
                    let (tail, _) = maker.make(want, &mut rng);
                    prompt.push_str(&tail);
                }
                tokens += want;
            }
            if tokens < input {
                let (tail, _) = maker.make(input - tokens, &mut rng);
                prompt.push_str(&tail);
            }
            let t0 = *first_ts.get_or_insert(ts);
            items.push(Item {
                group: Arc::from("trace"),
                input_tokens: maker.count(&prompt),
                prompt,
                output_tokens: output,
                at_ms: Some((ts - t0).max(0.0) / speedup),
            });
        }
        if items.is_empty() {
            return Err(file_err("no requests in the trace".into()));
        }
        Ok(Dataset::Items(Arc::new(items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn lengths_parse_and_sample() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(Lengths::parse("128"), Ok(Lengths::Fixed { n: 128 }));
        let u = Lengths::parse("10-20").unwrap_or(Lengths::Fixed { n: 0 });
        for _ in 0..100 {
            let x = u.sample(&mut rng);
            assert!((10..=20).contains(&x));
        }
        let n = Lengths::parse("100+-10").unwrap_or(Lengths::Fixed { n: 0 });
        let mean: f64 = (0..2000)
            .map(|_| f64::from(n.sample(&mut rng)))
            .sum::<f64>()
            / 2000.0;
        assert!((mean - 100.0).abs() < 2.0, "{mean}");
        for bad in ["", "0", "x", "20-10", "0-5", "-1+-2"] {
            assert!(Lengths::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_prompts_are_exact() {
        let mut rng = SmallRng::seed_from_u64(2);
        for n in [1, 7, 64, 1000] {
            let (s, c) = PromptMaker::Bytes.make(n, &mut rng);
            assert_eq!((s.len() as u32, c), (n, n));
        }
    }

    #[test]
    fn shared_prefix_groups_share_their_prefix() {
        let mut rng = SmallRng::seed_from_u64(3);
        let d = Dataset::shared_prefix(&PromptMaker::Bytes, 3, 4, 100, 20, 8, &mut rng)
            .unwrap_or(Dataset::Items(Arc::new(vec![])));
        assert_eq!(d.len(), Some(12));
        let items: Vec<Item> = (0..12).map(|i| d.item(i, &mut rng)).collect();
        for (i, it) in items.iter().enumerate() {
            assert_eq!(&*it.group, format!("prefix-{}", i % 3));
            assert_eq!(it.prompt[..100], items[i % 3].prompt[..100]);
            assert_eq!(it.input_tokens, 121);
        }
        assert_ne!(items[0].prompt[..100], items[1].prompt[..100]);
        assert_ne!(items[0].prompt, items[3].prompt);
    }
}
