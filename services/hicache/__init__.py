"""The hierarchical KV cache service: L2 bytes in shared host memory, L3 storage behind it."""
