"""Prompts `radixmesh offline` runs when given no --input, so a newcomer sees it work."""

DEMO_REQUESTS: list[dict] = [
    {"text": "The quick brown fox", "max_new_tokens": 32, "temperature": 0},
    {"text": "The quick brown fox jumps over", "max_new_tokens": 32, "temperature": 0},
    {"messages": [{"role": "user", "content": "Write a haiku about caching."}],
     "max_new_tokens": 48, "temperature": 0.8, "top_p": 0.95, "seed": 7},
    {"text": "def fibonacci(n):", "max_new_tokens": 40, "temperature": 0.6, "top_k": 20},
    {"input_ids": [1, 5, 9, 14, 20], "max_new_tokens": 16, "ignore_eos": True},
    {"text": "Numbers: 1, 2, 3,", "max_new_tokens": 24, "stop": ["\n"], "seed": 3},
    {"text": "", "max_new_tokens": 8},
    {"text": "Once upon a time", "max_new_tokens": 32, "frequency_penalty": 0.5,
     "repetition_penalty": 1.2, "seed": 11},
]
