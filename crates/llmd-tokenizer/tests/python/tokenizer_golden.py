"""Golden token ids and chat renderings from HF `tokenizers` and `transformers`.

For each model directory given, completions prompts are tokenized as vLLM does
(`tokenizer(prompt, add_special_tokens=True)`), and chat requests are normalized as vLLM does
(text parts joined with "\n", tool-call arguments parsed, tools dumped with every declared
field) and rendered with `apply_chat_template(..., tokenize=False)`, then tokenized with
`add_special_tokens=False`. Both the `tokenizers` ids and the `transformers` ids are recorded
(they must agree).

Usage: tokenizer_golden.py OUT.json NAME=DIR [NAME=DIR ...]
"""

import copy
import json
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.\n\nAnd then?",
    "  leading and trailing spaces  ",
    "Unicode: naïve café — 東京 🚀 emoji, Ünïcödé",
    "def f(x):\n    return x ** 2  # square\n\n\tprint(f(12345678))",
    "<|begin_of_text|> looks special, <|im_start|> too",
    "numbers 1 22 333 4444 55555 3.14159 1e-7",
    "",
    "\n\n\n",
]

LLAMA_CHATS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"messages": [
        {"role": "system", "content": "You are a helpful assistant.  "},
        {"role": "user", "content": "  Summarize:\n\nLLM serving is hard."},
        {"role": "assistant", "content": "It is."},
        {"role": "user", "content": [{"type": "text", "text": "Why?"}, {"type": "text", "text": "Explain."}]},
    ]},
    {"messages": [{"role": "user", "content": "Continue this"}], "add_generation_prompt": False},
    {"messages": [{"role": "user", "content": "日本語で答えて 🚀"}]},
]

QWEN_CHATS = LLAMA_CHATS + [
    {
        "messages": [
            {"role": "system", "content": "Use tools when useful."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"c\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21.5}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "ok"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"]}}},
            {"type": "function", "function": {"name": "noop", "strict": True}},
        ],
    },
    {"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "and 3+3?"},
    ], "chat_template_kwargs": {"enable_thinking": False}},
    {"messages": [
        {"role": "user", "content": "Write a haiku"},
        {"role": "assistant", "content": "Autumn moonlight—  "},
    ], "add_generation_prompt": False, "continue_final_message": True},
]


def normalize_message(m):
    out = {"role": m["role"]}
    content = m.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        content = "\n".join(p if isinstance(p, str) else p["text"] for p in content)
    out["content"] = content
    if m.get("tool_calls"):
        calls = copy.deepcopy(m["tool_calls"])
        for c in calls:
            args = c["function"].get("arguments")
            c["function"]["arguments"] = json.loads(args) if isinstance(args, str) and args else (args or {})
        out["tool_calls"] = calls
    for key in ("tool_call_id", "name", "reasoning_content"):
        if m.get(key) is not None:
            out[key] = m[key]
    return out


def normalize_tool(t):
    f = t["function"]
    func = {"name": f["name"], "description": f.get("description"), "parameters": f.get("parameters")}
    func.update({k: v for k, v in f.items() if k not in func})
    out = {"type": t.get("type", "function"), "function": func}
    out.update({k: v for k, v in t.items() if k not in out})
    return out


def main():
    out_path, specs = sys.argv[1], sys.argv[2:]
    golden = {}
    for spec in specs:
        name, path = spec.split("=", 1)
        fast = Tokenizer.from_file(f"{path}/tokenizer.json")
        hf = AutoTokenizer.from_pretrained(path)
        completions = []
        for p in PROMPTS:
            ids = fast.encode(p, add_special_tokens=True).ids
            assert ids == hf(p, add_special_tokens=True).input_ids, (name, p)
            completions.append({"prompt": p, "ids": ids})
        chats = []
        for req in (LLAMA_CHATS if "llama" in name.lower() else QWEN_CHATS):
            kwargs = dict(req.get("chat_template_kwargs", {}))
            text = hf.apply_chat_template(
                [normalize_message(m) for m in req["messages"]],
                tools=[normalize_tool(t) for t in req["tools"]] if req.get("tools") else None,
                add_generation_prompt=req.get("add_generation_prompt", True),
                continue_final_message=req.get("continue_final_message", False),
                tokenize=False,
                **kwargs,
            )
            ids = fast.encode(text, add_special_tokens=False).ids
            assert ids == hf(text, add_special_tokens=False).input_ids, (name, text)
            chats.append({"request": req, "text": text, "ids": ids})
        golden[name] = {"completions": completions, "chats": chats}
    with open(out_path, "w") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
