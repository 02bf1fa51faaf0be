"""What the API-key tests share: the keys of the keyed mesh (`conftest.py`) and a plain HTTP
call (urllib) that hands back error answers instead of raising them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

KEYS = ("sk-first-0123456789", "sk-second-9876543210")
WRONG = "sk-not-a-key"
MODEL = "tiny-llama"  # the served name of the session's tiny model


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> dict:
        return json.loads(self.text)


def http(method: str, url: str, body: dict | None = None,
         headers: dict[str, str] | None = None) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        **({} if body is None else {"Content-Type": "application/json"}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read().decode())


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


