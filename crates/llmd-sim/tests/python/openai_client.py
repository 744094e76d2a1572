"""Drives a simulator with the real `openai` client; prints one JSON object with what it saw.

Usage: openai_client.py BASE_URL MODEL
"""

import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
out = {}

models = client.models.list()
out["models"] = [m.id for m in models.data]

c = client.completions.create(model=model, prompt="The simulator answers", max_tokens=5)
out["completion"] = {"id": c.id, "text": c.choices[0].text, "finish": c.choices[0].finish_reason,
                     "usage": c.usage.model_dump(exclude_none=True)}

chunks = list(client.completions.create(model=model, prompt="Stream this", max_tokens=4, stream=True,
                                        stream_options={"include_usage": True}))
out["completion_stream"] = {
    "texts": [ch.choices[0].text for ch in chunks if ch.choices],
    "finishes": [ch.choices[0].finish_reason for ch in chunks if ch.choices],
    "usage": [ch.usage.model_dump(exclude_none=True) for ch in chunks if ch.usage],
}

r = client.chat.completions.create(model=model, messages=[{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": "Say hello"}], max_tokens=6)
out["chat"] = {"id": r.id, "role": r.choices[0].message.role, "content": r.choices[0].message.content,
               "finish": r.choices[0].finish_reason, "usage": r.usage.model_dump(exclude_none=True)}

chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Stream hello"}],
                                             max_tokens=3, stream=True, stream_options={"include_usage": True}))
out["chat_stream"] = {
    "roles": [ch.choices[0].delta.role for ch in chunks if ch.choices],
    "contents": [ch.choices[0].delta.content for ch in chunks if ch.choices],
    "finishes": [ch.choices[0].finish_reason for ch in chunks if ch.choices],
    "usage": [ch.usage.model_dump(exclude_none=True) for ch in chunks if ch.usage],
}

try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    out["unknown_model"] = "no error"
except openai.NotFoundError as e:
    out["unknown_model"] = {"status": e.status_code, "message": str(e)}

try:
    client.completions.create(model=model, prompt="x", max_tokens=0)
    out["zero_max_tokens"] = "no error"
except openai.BadRequestError as e:
    out["zero_max_tokens"] = {"status": e.status_code}

print(json.dumps(out))
