//! Block digests as vLLM hashes them for one request (LoRA and `cache_salt` extra keys at each
//! block's absolute position), and the extra keys as vLLM publishes them in `BlockStored`.

use llmd_kv_index::events::WireValue;
use llmd_kv_index::hashing::{BlockDigest, RequestExtras, VllmHasher};

use crate::lora::Adapter;

/// The extra keys vLLM (>= 0.31) hashes for a request served by `lora` with `cache_salt`.
pub fn extras(lora: Option<&Adapter>, cache_salt: Option<String>) -> RequestExtras {
    RequestExtras {
        lora: lora.map(Adapter::hash_key),
        cache_salt,
        ..RequestExtras::default()
    }
}

/// Appends the digests of `tokens`' full blocks not yet in `digests`, with each block's extra
/// keys at its absolute position (the salt only on block 0).
pub(super) fn extend_digests(
    hasher: &VllmHasher,
    extras: &RequestExtras,
    tokens: &[u32],
    digests: &mut Vec<BlockDigest>,
    scratch: &mut Vec<u8>,
) {
    let bs = hasher.block_size();
    let full = tokens.len() / bs;
    let plain = extras.is_empty();
    for i in digests.len()..full {
        let extra = if plain {
            None
        } else {
            extras.block_extra_keys(i * bs, (i + 1) * bs)
        };
        let d = hasher.hash_block(
            digests.last(),
            &tokens[i * bs..(i + 1) * bs],
            extra.as_deref(),
            scratch,
        );
        digests.push(d);
    }
}

/// A block's extra keys as vLLM >= 0.31 publishes them in `BlockStored.extra_keys`
/// (`to_event_extra_keys`: the tags stripped, the LoRA path left out): `[lora_name, salt]`,
/// nil when the block has none.
pub(super) fn published_extra_keys(extras: &RequestExtras, start: usize) -> WireValue {
    let mut keys = Vec::new();
    if let Some(l) = &extras.lora {
        keys.push(WireValue::Str(l.name.clone()));
    }
    if start == 0
        && let Some(salt) = extras.cache_salt.as_deref().filter(|s| !s.is_empty())
    {
        keys.push(WireValue::Str(salt.to_owned()));
    }
    if keys.is_empty() {
        WireValue::Nil
    } else {
        WireValue::Array(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_kv_index::hashing::LoraKey;

    #[test]
    fn continued_digests_equal_hashing_in_one_go_with_salt_and_lora() {
        let hasher = VllmHasher::new(Some("7"), 4).unwrap();
        let extras = RequestExtras {
            lora: Some(LoraKey {
                name: "a".into(),
                path: "/p".into(),
            }),
            cache_salt: Some("s".into()),
            ..RequestExtras::default()
        };
        let tokens: Vec<u32> = (0..22).collect();
        let mut scratch = Vec::new();
        let mut incremental = Vec::new();
        for end in [3, 9, 13, 22] {
            extend_digests(
                &hasher,
                &extras,
                &tokens[..end],
                &mut incremental,
                &mut scratch,
            );
        }
        let mut once = Vec::new();
        hasher.digests_into(None, &tokens, &extras, &mut once);
        assert_eq!(incremental, once);
        assert_eq!(incremental.len(), 5);
        // And the salt changes only block 0's input (later blocks through the chain).
        let unsalted = RequestExtras {
            cache_salt: None,
            ..extras.clone()
        };
        let mut other = Vec::new();
        hasher.digests_into(None, &tokens, &unsalted, &mut other);
        assert_ne!(other[0], once[0]);
        assert_eq!(
            published_extra_keys(&extras, 0),
            WireValue::Array(vec![WireValue::Str("a".into()), WireValue::Str("s".into())])
        );
        assert_eq!(
            published_extra_keys(&extras, 4),
            WireValue::Array(vec![WireValue::Str("a".into())])
        );
        assert_eq!(
            published_extra_keys(&RequestExtras::default(), 0),
            WireValue::Nil
        );
    }
}
