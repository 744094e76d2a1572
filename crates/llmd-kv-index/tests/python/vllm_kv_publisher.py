"""A KV-event publisher that behaves like vLLM's ZmqEventPublisher, for llmd-kv-index's tests.

The event classes mirror vllm/distributed/kv_events.py: msgspec tagged structs, positional
arrays (vLLM <= 0.23, --layout array) or tagged maps (vLLM >= 0.25, --layout map), inside an
array_like EventBatch. Block hashes are computed the way vLLM's sha256_cbor does it:
sha256(cbor2.dumps((parent_digest, tuple(tokens), extra_keys), canonical=True)), published as
the last 8 digest bytes.

Protocol with the Rust test (one JSON object per stdout line):
  -> {"endpoint": ...}       bound PUB; then empty warm-up batches until stdin says "go"
  <- go                      phase 1: prompts A (4 blocks, in two events), garbage, a gap,
                             prompt B (2 blocks), prompt C (LoRA + cache salt extra keys)
  -> {"phase1": {...}}
  <- restart                 phase 2: seq restarts at 0 with prompt D
  -> {"phase2": {...}}
"""

import argparse
import hashlib
import json
import random
import select
import sys
import time
from typing import Any, Optional, Union

import cbor2
import msgspec
import zmq


def make_classes(array_like: bool):
    class KVCacheEvent(msgspec.Struct, array_like=array_like, omit_defaults=True, gc=False, tag=True):
        pass

    class BlockStored(KVCacheEvent):
        block_hashes: list[int]
        parent_block_hash: Optional[int]
        token_ids: list[int]
        block_size: int
        lora_id: Optional[int]
        medium: Optional[str]
        lora_name: Optional[str]
        extra_keys: Optional[list[Optional[list[Any]]]] = None
        group_idx: Optional[int] = None
        kv_cache_spec_kind: Optional[str] = None
        kv_cache_spec_sliding_window: Optional[int] = None

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[int]
        medium: Optional[str]
        group_idx: Optional[int] = None

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
        ts: float
        events: list[Union[BlockStored, BlockRemoved, AllBlocksCleared]]
        data_parallel_rank: Optional[int] = None

    return BlockStored, BlockRemoved, AllBlocksCleared, KVEventBatch


def sha256_cbor(x) -> bytes:
    return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()


def block_digests(seed: str, block_size: int, tokens, extra_for_block=lambda i: None):
    parent = sha256_cbor(seed)
    out = []
    for i in range(len(tokens) // block_size):
        block = tuple(tokens[i * block_size:(i + 1) * block_size])
        parent = sha256_cbor((parent, block, extra_for_block(i)))
        out.append(parent)
    return out


def as_int(digest: bytes) -> int:
    return int.from_bytes(digest, "big") & (2**64 - 1)


def stdin_line(timeout: float) -> Optional[str]:
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return sys.stdin.readline().strip() if ready else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=["map", "array"], required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--seed", default="0")
    ap.add_argument("--block-size", type=int, default=16)
    args = ap.parse_args()
    BlockStored, BlockRemoved, AllBlocksCleared, KVEventBatch = make_classes(args.layout == "array")
    enc = msgspec.msgpack.Encoder()
    bs = args.block_size
    rng = random.Random(42)

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    print(json.dumps({"endpoint": f"tcp://127.0.0.1:{port}"}), flush=True)
    topic = args.topic.encode()
    seq = 0

    def send(events, seq_override=None):
        nonlocal seq
        s = seq if seq_override is None else seq_override
        payload = enc.encode(KVEventBatch(ts=time.time(), events=events, data_parallel_rank=0))
        pub.send_multipart([topic, s.to_bytes(8, "big"), payload])
        seq = s + 1

    def stored(digests, parent, tokens, **kw):
        return BlockStored(
            block_hashes=[as_int(d) for d in digests],
            parent_block_hash=as_int(parent) if parent else None,
            token_ids=list(tokens),
            block_size=bs,
            lora_id=None,
            medium="GPU",
            lora_name=kw.pop("lora_name", None),
            extra_keys=kw.pop("extra_keys", [None] * len(digests)),
            group_idx=0,
            kv_cache_spec_kind="full_attention" if args.layout == "map" else None,
        )

    # Warm-up until the subscriber is there (PUB drops messages before the subscription).
    deadline = time.time() + 20
    while True:
        send([])
        line = stdin_line(0.02)
        if line == "go":
            break
        if time.time() > deadline:
            sys.exit("no go from the test")

    # Prompt A: 4 blocks, stored as 2 + 2 with a parent.
    tokens_a = [rng.randrange(128_256) for _ in range(4 * bs + 5)]
    da = block_digests(args.seed, bs, tokens_a)
    send([stored(da[:2], None, tokens_a[:2 * bs])])
    send([stored(da[2:], da[1], tokens_a[2 * bs:4 * bs])])

    # Garbage: a 2-frame message and an undecodable payload (neither advances seq).
    pub.send_multipart([topic, b"\x00" * 8])
    pub.send_multipart([topic, seq.to_bytes(8, "big"), b"\xc1 not msgpack"])

    # A gap of 2 batches, then prompt B (2 blocks) and an unknown future event type.
    seq += 2
    gap_to = seq
    tokens_b = [rng.randrange(128_256) for _ in range(2 * bs)]
    db = block_digests(args.seed, bs, tokens_b)
    send([stored(db, None, tokens_b)])

    # Prompt C: a LoRA adapter and a cache salt, as vLLM >= 0.31 keys them.
    tokens_c = [rng.randrange(128_256) for _ in range(3 * bs)]
    lora, path, salt = "sql-lora", "/adapters/sql-lora", "tenant-7"

    def extra(i):
        keys = [("lora", lora, path)]
        if i == 0:
            keys.append(("cache_salt", salt))
        return tuple(keys)

    dc = block_digests(args.seed, bs, tokens_c, extra)
    published_extra = [[lora] + ([salt] if i == 0 else []) for i in range(len(dc))]
    send([stored(dc, None, tokens_c, lora_name=lora, extra_keys=published_extra)])

    # Removal of A's last block.
    send([BlockRemoved(block_hashes=[as_int(da[3])], medium="GPU", group_idx=0)])

    print(json.dumps({"phase1": {
        "a": {"tokens": tokens_a, "keys": [as_int(d) for d in da]},
        "b": {"tokens": tokens_b, "keys": [as_int(d) for d in db]},
        "c": {"tokens": tokens_c, "keys": [as_int(d) for d in dc], "lora": lora, "path": path, "salt": salt},
        "gap": {"expected": gap_to - 2, "got": gap_to},
        "last_seq": seq - 1,
    }}), flush=True)

    if stdin_line(30) != "restart":
        sys.exit("no restart from the test")
    tokens_d = [rng.randrange(128_256) for _ in range(bs)]
    dd = block_digests(args.seed, bs, tokens_d)
    send([stored(dd, None, tokens_d)], seq_override=0)
    print(json.dumps({"phase2": {"d": {"tokens": tokens_d, "keys": [as_int(d) for d in dd]}}}), flush=True)
    time.sleep(0.5)
    pub.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    main()
