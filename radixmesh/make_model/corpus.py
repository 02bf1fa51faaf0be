"""The text the toy tokenizer is trained on, written for this project.

It mixes English prose, Python and shell code, numbers, chat turns, accented Latin, Greek,
Cyrillic, CJK and emoji, so the trained byte-level BPE learns whole-word merges for common
English while rarer scripts stay split into byte pieces: decoding those token by token yields
partial UTF-8 characters, which is exactly what the detokenizer must cope with.
"""

from __future__ import annotations

PROSE = """\
The scheduler keeps a queue of waiting requests and a batch of running ones. At every step it
decides which requests to prefill and which to decode, then sends one plan to the worker.
When memory runs short, the newest request is retracted and its pages go back to the pool.
A radix tree maps prefixes of token ids to pages of the key-value cache, so two prompts that
share a long system message pay for it only once. Eviction walks the least recently used
leaves first, and a leaf that a running request still holds is never evicted.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore, and the
shells she sells are surely sea shells. It was a bright cold day in April, and the clocks
were striking thirteen. All happy families are alike; every unhappy family is unhappy in its
own way. Call me Ishmael. In the beginning the universe was created; this has made a lot of
people very angry and been widely regarded as a bad move.
Throughput is the number of output tokens divided by the wall time from the first request
sent to the last token received. Latency is measured per token: the time to first token,
then the gap between each pair of tokens that follow. The median and the 99th percentile
are reported, together with the hardware, the commit and the exact command line.
"""

CODE = """\
def fibonacci(n: int) -> list[int]:
    \"\"\"Returns the first n Fibonacci numbers.\"\"\"
    values = [0, 1]
    while len(values) < n:
        values.append(values[-1] + values[-2])
    return values[:n]


class PageAllocator:
    def __init__(self, num_pages: int) -> None:
        self.free = list(range(num_pages))

    def allocate(self, count: int) -> list[int]:
        if count > len(self.free):
            raise MemoryError(f"need {count} pages, only {len(self.free)} free")
        pages, self.free = self.free[:count], self.free[count:]
        return pages

for i in range(10):
    print(i, i * i, hex(i), {"key": i, "ok": True, "none": None})

$ python -m pytest tests/ -q --maxfail=1 && echo "all green" || exit 1
$ curl -s http://localhost:30000/v1/models | jq '.data[0].id'
SELECT id, name, created_at FROM users WHERE age >= 18 ORDER BY created_at DESC LIMIT 20;
{"model": "toy", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 16}
"""

NUMBERS = """\
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 32 64 128 256 512 1024 2048 4096
3.14159 2.71828 1.41421 -0.5 +7 1e-5 6.02e23 100% 42 1,000,000 $19.99 €25.50 £3 ¥1200
2024-03-15 09:41:07 UTC; 12:00 pm; phone +1 (555) 010-2345; version 0.4.2-rc1; 0x7fff_ffff
The sum of 17 and 25 is 42; 6 times 7 is 42; 1764 is 42 squared; 2**10 = 1024.
"""

CHAT = """\
<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is the capital of France?<|im_end|>
<|im_start|>assistant
The capital of France is Paris.<|im_end|>
<|im_start|>user
And how many people live there?<|im_end|>
<|im_start|>assistant
About two million people live in the city itself, and over twelve million in the region.<|im_end|>
"""

MULTILINGUAL = """\
Café au lait, crème brûlée, naïve façade, jalapeño, Zürich, Ångström, São Paulo, Łódź, Dvořák.
Ça va très bien, merci ! ¿Dónde está la biblioteca? Größe, Straße, Übermut, œuvre, ætt.
Ελληνικά: καλημέρα κόσμε, ευχαριστώ πολύ. Русский: привет, мир! Как дела? Спасибо.
日本語: こんにちは、世界。今日はいい天気ですね。東京は日本の首都です。
中文: 你好，世界！我们今天学习分词器。北京欢迎你。机器学习很有趣。
한국어: 안녕하세요, 세계! 감사합니다. עברית: שלום עולם. العربية: مرحبا بالعالم.
हिन्दी: नमस्ते दुनिया। ไทย: สวัสดีชาวโลก
Emoji: 😀 😂 🚀 🎉 👍🏽 ❤️ 🇫🇷 👩‍💻 🐍 ☕ ✅ ∑ ∞ ≈ ≠ → ← ✓ ½ ¾ © ® ™
"""

CORPUS: str = "\n".join((PROSE, CODE, NUMBERS, CHAT, MULTILINGUAL))
