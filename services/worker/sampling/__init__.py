"""Batched, counter-seeded token sampling for the model worker."""

from radixmesh.services.worker.sampling.penalties import PenaltyState
from radixmesh.services.worker.sampling.random import draw_seed
from radixmesh.services.worker.sampling.sampler import Sampler, filter_probs
from radixmesh.services.worker.sampling.sampling_batch import SamplingBatch

__all__ = ["PenaltyState", "Sampler", "SamplingBatch", "draw_seed", "filter_probs"]
