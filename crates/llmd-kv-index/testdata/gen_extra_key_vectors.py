"""Block hashes of salted and LoRA requests, computed by vLLM's own hashing functions.

Writes `vllm-extra-keys.json` (next to this script) from the released vLLM sources: the
functions `get_request_block_hasher`, `generate_block_hash_extra_keys`,
`_gen_lora_extra_hash_keys`, `_gen_mm_extra_hash_keys`, `_gen_prompt_embeds_extra_hash_keys`,
`hash_block_tokens` and `init_none_hash` are taken, unchanged, out of
`vllm/v1/core/kv_cache_utils.py` (and `sha256_cbor` out of `vllm/utils/hashing.py`) and run
against a stand-in `Request` that has the attributes they read. Nothing of vLLM is copied into
this repository: the sources are read at generation time.

    pip download vllm==0.33.0 --no-deps --no-binary :all:   # or fetch the sdist by hand
    tar xzf vllm-0.33.0.tar.gz && tar xzf vllm-0.29.0.tar.gz
    python gen_extra_key_vectors.py vllm-0.33.0 vllm-0.29.0

vLLM 0.33.0 keys tagged extras (`("lora", name, path)`, `("cache_salt", salt)`, as 0.31 does);
0.29.0 the untagged ones (`name`, `salt`). Needs `cbor2` only.
"""

import ast
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cbor2

WANTED = [
    "_gen_mm_extra_hash_keys",
    "_gen_lora_extra_hash_keys",
    "_gen_prompt_embeds_extra_hash_keys",
    "generate_block_hash_extra_keys",
    "hash_block_tokens",
    "resolve_none_hash_seed",
    "init_none_hash",
    "get_request_block_hasher",
]


def load_vllm(root: Path) -> dict:
    """vLLM's hashing functions from a source tree, in a namespace of their own."""
    ns: dict = {
        "__name__": "vllm_kv_cache_utils",
        "hashlib": hashlib,
        "os": os,
        "cbor2": cbor2,
        "Any": Any,
        "Callable": Callable,
        "Sequence": Sequence,
        "Iterable": Iterable,
        "BlockHash": bytes,
        "Request": object,
        "logger": type("L", (), {"warning": staticmethod(lambda *a, **k: None)})(),
    }
    hashing = ast.parse((root / "vllm/utils/hashing.py").read_text())
    for node in hashing.body:
        if isinstance(node, ast.FunctionDef) and node.name == "sha256_cbor":
            exec(compile(ast.Module([node], []), "hashing.py", "exec"), ns)
    # xxhash variants are not used; the names only have to exist.
    ns["xxhash"] = ns["xxhash_cbor"] = object()
    ns["_NON_CRYPTO_HASH_FUNCTIONS"] = frozenset()
    ns["DEFAULT_NONE_HASH_SEED"] = "vllm-none-hash"
    src = (root / "vllm/v1/core/kv_cache_utils.py").read_text()
    tree = ast.parse(src)
    found = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in WANTED:
            exec(compile(ast.Module([node], []), "kv_cache_utils.py", "exec"), ns)
            found.add(node.name)
    missing = set(WANTED) - found - {"resolve_none_hash_seed"}
    if missing:
        sys.exit(f"{root}: missing {sorted(missing)}")
    return ns


class LoRARequest:
    def __init__(self, name, path):
        self.lora_name = name
        self.lora_path = path
        self.lora_int_id = 1


class Request:
    """The attributes of vllm.v1.request.Request the hashing functions read."""

    def __init__(self, tokens, lora, salt):
        self.all_token_ids = list(tokens)
        self.num_tokens = len(tokens)
        self.block_hashes = []
        self.mm_features = []
        self.lora_request = lora
        self.cache_salt = salt
        self.prompt_embeds = None
        self._prompt_embeds_per_block_hashes = {}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out = Path(__file__).with_name("vllm-extra-keys.json")
    seed, block_size = "7", 16
    os.environ["PYTHONHASHSEED"] = seed
    tokens = [(i * 7919 + 13) % 128_000 for i in range(3 * block_size + 5)]
    cases = []
    for version_dir, style in [(sys.argv[1], "tagged"), (sys.argv[2], "untagged")]:
        root = Path(version_dir)
        version = root.name.removeprefix("vllm-")
        ns = load_vllm(root)
        fn = ns["sha256_cbor"]
        ns["init_none_hash"](fn)
        hasher = ns["get_request_block_hasher"](block_size, fn)
        for case, lora, salt in [
            ("plain", None, None),
            ("salt", None, "tenant-a"),
            ("lora", ("sql-lora", "/adapters/sql-lora"), None),
            ("lora+salt", ("sql-lora", "/adapters/sql-lora"), "tenant-a"),
            ("lora_other_path", ("sql-lora", "/adapters/sql-lora-v2"), None),
        ]:
            req = Request(tokens, LoRARequest(*lora) if lora else None, salt)
            digests = hasher(req)
            extra = [
                ns["generate_block_hash_extra_keys"](req, i * block_size, (i + 1) * block_size, 0)[0]
                for i in range(len(digests))
            ]
            cases.append({
                "id": f"vllm-{version}/sha256_cbor/seed={seed}/bs={block_size}/extra={case}",
                "vllm": version,
                "style": style,
                "hash_algo": "sha256_cbor",
                "python_hash_seed": seed,
                "block_size": block_size,
                "tokens": tokens,
                "lora": {"name": lora[0], "path": lora[1]} if lora else None,
                "cache_salt": salt,
                "extra_keys": [None if e is None else [list(k) if isinstance(k, tuple) else k for k in e] for e in extra],
                "blocks": [
                    {"digest_hex": d.hex(), "event_int": int.from_bytes(d, "big") & (2**64 - 1)}
                    for d in digests
                ],
            })
    out.write_text(json.dumps({
        "about": "Block hashes of requests with a cache_salt and/or a LoRA adapter, computed by "
        "vLLM's own hashing functions (get_request_block_hasher, generate_block_hash_extra_keys, "
        "hash_block_tokens, sha256_cbor) loaded from the released vLLM 0.33.0 (tagged extra keys) "
        "and 0.29.0 (untagged) sources by gen_extra_key_vectors.py. event_int: the value vLLM "
        "publishes in BlockStored.block_hashes.",
        "cases": cases,
    }, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
