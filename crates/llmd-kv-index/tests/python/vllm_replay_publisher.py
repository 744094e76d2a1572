"""A pod's KV-event publisher and replay socket shaped like vLLM's ZmqEventPublisher, driven
command by command, so a Rust test can stage restarts, lost batches and late subscribers.

As vLLM (vllm/distributed/kv_events.py): a PUB socket that binds (or connects, for a bound
subscriber), seq from 0 per instance as 8 bytes big-endian, a msgspec array_like KVEventBatch
with tagged-map events (vLLM >= 0.25), and a ROUTER replay socket keeping the last
`buffer_steps` batches: a request [id, b"", start_seq] is answered with [id, b"", topic, seq,
payload] for each buffered seq >= start_seq, then [id, b"", b"", -1 as 8 bytes, b""] (>= 0.27).
Block hashes are vLLM's sha256_cbor, published as the last 8 digest bytes.

One JSON command per stdin line, one JSON answer per stdout line:
  {"op": "start", "pub": "tcp://127.0.0.1:0" | "tcp://127.0.0.1:PORT", "connect": false,
   "replay": "tcp://127.0.0.1:0" | null}          -> {"pub": endpoint, "replay": endpoint}
      a new instance: seq back to 0, empty replay buffer
  {"op": "empty", "wire": true}                      -> {"seq": n}
  {"op": "store", "blocks": k, "wire": true, "salt": 7}
      -> {"seq": n, "keys": [...], "tokens": [...]}  (k new blocks of a random prompt)
      "wire": false keeps the batch in the replay buffer only (lost on the wire)
  {"op": "skip", "n": 3}                              -> {"seq": next}   (seq jumps, nothing kept)
  {"op": "stop"}                                      -> {"stopped": true}  (the instance dies)
  {"op": "exit"}
"""

import hashlib
import json
import random
import sys
import threading
import time
from collections import deque
from typing import Any, Optional, Union

import cbor2
import msgspec
import zmq


class KVCacheEvent(msgspec.Struct, array_like=False, omit_defaults=True, gc=False, tag=True):
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


END_SEQ = (-1).to_bytes(8, "big", signed=True)


def sha256_cbor(x) -> bytes:
    return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()


def as_int(digest: bytes) -> int:
    return int.from_bytes(digest, "big") & (2**64 - 1)


def bind(sock, endpoint):
    """Binds, waiting for a previous instance's port to be released (libzmq closes sockets in
    its I/O thread, shortly after close() returns)."""
    deadline = time.time() + 5
    while True:
        try:
            sock.bind(endpoint)
            return sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or time.time() > deadline:
                raise
            time.sleep(0.01)


class Instance:
    """One publisher process's sockets and state."""

    def __init__(self, ctx, pub_ep, connect, replay_ep, topic, buffer_steps=10000):
        self.topic = topic.encode()
        self.pub = ctx.socket(zmq.PUB)
        self.pub.set_hwm(100000)
        if connect:
            self.pub.connect(pub_ep)
            self.pub_ep = pub_ep
        else:
            self.pub_ep = bind(self.pub, pub_ep)
        self.seq = 0
        self.buffer = deque(maxlen=buffer_steps)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.replay_ep = None
        self.thread = None
        if replay_ep:
            router = ctx.socket(zmq.ROUTER)
            self.replay_ep = bind(router, replay_ep)
            self.thread = threading.Thread(target=self.serve_replay, args=(router,), daemon=True)
            self.thread.start()

    def serve_replay(self, router):
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not self.stop.is_set():
            if not dict(poller.poll(50)).get(router):
                continue
            frame = router.recv_multipart()
            if len(frame) != 3:
                continue
            client_id, _, start_seq_bytes = frame
            start_seq = int.from_bytes(start_seq_bytes, "big")
            with self.lock:
                buffered = list(self.buffer)
            for seq, buf in buffered:
                if seq >= start_seq:
                    router.send_multipart((client_id, b"", self.topic, seq.to_bytes(8, "big"), buf))
            router.send_multipart((client_id, b"", b"", END_SEQ, b""))
        router.close(linger=0)

    def publish(self, events, wire=True):
        payload = msgspec.msgpack.Encoder().encode(
            KVEventBatch(ts=time.time(), events=events, data_parallel_rank=0))
        seq = self.seq
        with self.lock:
            self.buffer.append((seq, payload))
        if wire:
            self.pub.send_multipart((self.topic, seq.to_bytes(8, "big"), payload))
        self.seq += 1
        return seq

    def close(self):
        self.stop.set()
        if self.thread:
            self.thread.join()
        self.pub.close(linger=0)


def main():
    topic = sys.argv[1]
    seed = sys.argv[2]
    bs = int(sys.argv[3])
    ctx = zmq.Context()
    rng = random.Random(1234)
    inst = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "start":
            inst = Instance(ctx, cmd["pub"], cmd.get("connect", False), cmd.get("replay"), topic)
            out = {"pub": inst.pub_ep, "replay": inst.replay_ep}
        elif op == "empty":
            out = {"seq": inst.publish([], cmd.get("wire", True))}
        elif op == "store":
            tokens = [rng.randrange(128_256) for _ in range(cmd["blocks"] * bs)]
            parent = sha256_cbor(seed)
            digests = []
            for i in range(cmd["blocks"]):
                parent = sha256_cbor((parent, tuple(tokens[i * bs:(i + 1) * bs]), None))
                digests.append(parent)
            ev = BlockStored(block_hashes=[as_int(d) for d in digests], parent_block_hash=None,
                             token_ids=tokens, block_size=bs, lora_id=None, medium="GPU",
                             lora_name=None, extra_keys=[None] * len(digests), group_idx=0,
                             kv_cache_spec_kind="full_attention")
            seq = inst.publish([ev], cmd.get("wire", True))
            out = {"seq": seq, "keys": [as_int(d) for d in digests], "tokens": tokens}
        elif op == "skip":
            inst.seq += cmd["n"]
            out = {"seq": inst.seq}
        elif op == "stop":
            inst.close()
            inst = None
            out = {"stopped": True}
        elif op == "exit":
            break
        else:
            out = {"error": f"unknown op {op}"}
        print(json.dumps(out), flush=True)
    if inst:
        inst.close()
    ctx.term()


if __name__ == "__main__":
    main()
