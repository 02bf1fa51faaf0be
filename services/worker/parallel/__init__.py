"""Tensor parallelism: how a model's tensors are split over the ranks of one worker group, and
the collectives that join the pieces."""
