"""Drives P/D requests through the proxy with the real `openai` client, and the same requests
straight at the decode engine; prints one JSON object with what it saw.

Usage: openai_pd.py PROXY_URL DECODE_URL PREFILL_HOST_PORT MODEL [CA_PEM]
With CA_PEM, PROXY_URL is https and the proxy's certificate must verify against that CA only.
"""

import json
import ssl
import sys

import openai

proxy, decode, prefill, model = sys.argv[1:5]
tls = {}
if len(sys.argv) > 5:
    ctx = ssl.create_default_context(cafile=sys.argv[5])
    tls["http_client"] = openai.DefaultHttpxClient(verify=ctx)
pd = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0,
                   default_headers={"x-prefiller-host-port": prefill}, **tls)
direct = openai.OpenAI(base_url=f"{decode}/v1", api_key="unused", max_retries=0)
out = {}

prompt = "Disaggregated serving splits the prompt's prefill from the decoding of the answer. " * 4
for name, client in (("pd", pd), ("direct", direct)):
    c = client.completions.create(model=model, prompt=prompt, max_tokens=8)
    chunks = list(client.completions.create(model=model, prompt=prompt, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}))
    chat = client.chat.completions.create(model=model, max_tokens=6,
                                          messages=[{"role": "user", "content": prompt}])
    chat_chunks = list(client.chat.completions.create(model=model, max_tokens=6, stream=True,
                                                      messages=[{"role": "user", "content": prompt}]))
    out[name] = {
        "text": c.choices[0].text,
        "finish": c.choices[0].finish_reason,
        "usage": c.usage.model_dump(exclude_none=True),
        "stream_text": "".join(ch.choices[0].text for ch in chunks if ch.choices),
        "stream_events": len(chunks),
        "stream_usage": [ch.usage.model_dump(exclude_none=True) for ch in chunks if ch.usage],
        "chat": chat.choices[0].message.content,
        "chat_stream": "".join(ch.choices[0].delta.content or "" for ch in chat_chunks if ch.choices),
    }

# A prefill target outside the allowlist: the client sees the 403.
denied = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0,
                       default_headers={"x-prefiller-host-port": "10.255.255.1:8000"}, **tls)
try:
    denied.completions.create(model=model, prompt="x", max_tokens=1)
    out["denied"] = None
except openai.APIStatusError as e:
    out["denied"] = e.status_code

print(json.dumps(out))
