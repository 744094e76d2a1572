//! Block hashing throughput against its baseline, measured in the same run: raw SHA-256 over
//! exactly the bytes vLLM hashes (the canonical CBOR of each block, encoded beforehand). The
//! target is `vllm_sha256_cbor` within 1.4x of that baseline.
//!
//! Run: `cargo bench -p llmd-kv-index --bench block_hash`

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use llmd_kv_index::hashing::{BlockDigest, RequestExtras, TokensHasher, VllmHasher};
use sha2::{Digest, Sha256};
use std::hint::black_box;

const BLOCK: usize = 64;
const BLOCKS: usize = 256;

/// Llama-3-like token ids (0..128256), deterministic.
fn tokens(n: usize) -> Vec<u32> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 128_256) as u32
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let toks = tokens(BLOCK * BLOCKS);
    let hasher = VllmHasher::new(Some("0"), BLOCK).unwrap();
    // The exact bytes vLLM hashes for each block (parent digests from a real chain).
    let mut digests = Vec::new();
    hasher.digests_into(None, &toks, &RequestExtras::default(), &mut digests);
    let encoded: Vec<Vec<u8>> = toks
        .chunks_exact(BLOCK)
        .enumerate()
        .map(|(i, block)| {
            let parent = if i == 0 {
                *hasher.root()
            } else {
                digests[i - 1]
            };
            let mut buf = vec![0x83, 0x58, 0x20];
            buf.extend_from_slice(&parent.0);
            buf.extend_from_slice(&[0x98, BLOCK as u8]);
            for &t in block {
                match t {
                    0..=23 => buf.push(t as u8),
                    24..=0xff => buf.extend_from_slice(&[0x18, t as u8]),
                    0x100..=0xffff => {
                        buf.push(0x19);
                        buf.extend_from_slice(&(t as u16).to_be_bytes());
                    }
                    _ => {
                        buf.push(0x1a);
                        buf.extend_from_slice(&t.to_be_bytes());
                    }
                }
            }
            buf.push(0xf6);
            buf
        })
        .collect();
    // Sanity: the baseline hashes the same bytes the hasher does.
    let check: [u8; 32] = Sha256::digest(&encoded[1]).into();
    assert_eq!(BlockDigest(check), digests[1]);
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    eprintln!(
        "{BLOCKS} blocks of {BLOCK} tokens, {} encoded bytes per block",
        bytes / BLOCKS
    );

    let mut g = c.benchmark_group("block_hash");
    g.throughput(Throughput::Elements(BLOCKS as u64));
    g.bench_function("baseline_sha256_of_encoded_bytes", |b| {
        b.iter(|| {
            for e in &encoded {
                black_box(Sha256::digest(black_box(e)));
            }
        })
    });
    let mut out = Vec::with_capacity(BLOCKS);
    g.bench_function("vllm_sha256_cbor", |b| {
        b.iter(|| {
            out.clear();
            hasher.keys_into(black_box(&toks), &mut out);
            black_box(&out);
        })
    });
    let mut scratch = Vec::with_capacity(BLOCK * 5 + 16);
    g.bench_function("encode_only_probe", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for block in toks.chunks_exact(BLOCK) {
                scratch.clear();
                llmd_kv_index::hashing::encode_token_ids_for_bench(&mut scratch, black_box(block));
                total += scratch.len();
            }
            black_box(total)
        })
    });
    let tokens_mode = TokensHasher::new("", "meta-llama/Llama-3.1-8B-Instruct", BLOCK).unwrap();
    g.bench_function("tokens_cbor_fnv", |b| {
        b.iter(|| {
            out.clear();
            tokens_mode.keys_into(None, black_box(&toks), &[], &mut out);
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
