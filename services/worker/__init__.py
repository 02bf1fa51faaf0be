"""The model-worker service: weights, KV tensors, attention backends, sampling."""
