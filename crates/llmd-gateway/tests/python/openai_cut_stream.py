"""Streams one completion through the gateway with the real `openai` client, whose upstream dies
mid-stream; prints one JSON object: the exception the client raised (or null) and what it got.

Usage: openai_cut_stream.py GATEWAY_URL MODEL
"""

import json
import sys

import openai

url, model = sys.argv[1:3]
client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
got = []
out = {"raised": None}
try:
    for chunk in client.completions.create(model=model, prompt="cut me", max_tokens=8, stream=True):
        got.extend(c.text for c in chunk.choices)
except Exception as e:  # noqa: BLE001 - which exception the SDK raises is what we report
    out["raised"] = f"{type(e).__module__}.{type(e).__name__}"
    out["message"] = str(e)
out["text"] = "".join(got)
print(json.dumps(out))
