"""Batched token sampling for the model worker, behind `--sampling-backend`."""

from radixmesh.services.worker.sampling.base import SamplingBackend
from radixmesh.services.worker.sampling.filters import filter_probs
from radixmesh.services.worker.sampling.penalties import PenaltyState
from radixmesh.services.worker.sampling.pytorch_backend import PyTorchSampler
from radixmesh.services.worker.sampling.random import draw_seed
from radixmesh.services.worker.sampling.registry import (
    SAMPLING_BACKENDS,
    make_sampler,
    pick_sampling_backend,
)
from radixmesh.services.worker.sampling.sampling_batch import SamplingBatch

# Today's sampler under its historical name: the pytorch backend.
Sampler = PyTorchSampler

__all__ = ["SAMPLING_BACKENDS", "PenaltyState", "PyTorchSampler", "Sampler", "SamplingBackend",
           "SamplingBatch", "draw_seed", "filter_probs", "make_sampler", "pick_sampling_backend"]
