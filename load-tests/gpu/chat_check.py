#!/usr/bin/env python3
"""One OpenAI-style chat completion against a served stack, with the standard library only
(the GPU machine has no `openai` package; CI's CPU tests use the official client):

    python chat_check.py http://127.0.0.1:30000/v1

Asks /models for the served model's id, sends a short chat completion, prints the reply and
its usage; exits non-zero when either call fails or the reply is empty.
"""

from __future__ import annotations

import json
import sys
import urllib.request


def call(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def main() -> int:
    base = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://127.0.0.1:30000/v1"
    model = call(f"{base}/models")["data"][0]["id"]
    reply = call(f"{base}/chat/completions", {
        "model": model, "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]})
    choice = reply["choices"][0]
    print(json.dumps({"model": model, "finish_reason": choice["finish_reason"],
                      "content": choice["message"]["content"], "usage": reply["usage"]}))
    return 0 if reply["usage"]["completion_tokens"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
