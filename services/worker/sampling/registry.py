"""Sampling backends, chosen by `--sampling-backend` name.

Both backends are always registered: the flashinfer one imports FlashInfer only when it is
built, so naming it on a machine without FlashInfer or without a GPU is a startup error that
says which of the two is missing, not an "unknown backend".
"""

from __future__ import annotations

import torch

from radixmesh.services.worker.sampling.base import SamplingBackend
from radixmesh.services.worker.sampling.flashinfer_backend import FlashInferSampler
from radixmesh.services.worker.sampling.pytorch_backend import PyTorchSampler
from radixmesh.shared.registry import Registry

SAMPLING_BACKENDS: Registry[type[SamplingBackend]] = Registry("sampling backend")
SAMPLING_BACKENDS.add(PyTorchSampler.name, PyTorchSampler)
SAMPLING_BACKENDS.add(FlashInferSampler.name, FlashInferSampler)


def pick_sampling_backend(name: str | None, device: torch.device,
                          deterministic: bool = False) -> str:
    """`--sampling-backend` resolved on this machine (None: auto, as SGLang defaults).

    Auto takes flashinfer on a CUDA device where it is installed, else pytorch; with
    `deterministic` always pytorch, the one whose draws are batch-invariant. A named backend
    this machine cannot run raises ValueError naming what is missing.
    """
    if name is None:
        if deterministic:
            return PyTorchSampler.name
        usable = FlashInferSampler.missing(device) is None
        return FlashInferSampler.name if usable else PyTorchSampler.name
    backend = SAMPLING_BACKENDS.get(name)
    if deterministic and backend is not PyTorchSampler:
        raise ValueError(f"--sampling-backend {name} is not batch-invariant: "
                         "--enable-deterministic-inference samples with pytorch")
    missing = backend.missing(device)
    if missing is not None:
        raise ValueError(f"--sampling-backend {name} needs {missing}")
    return name


def make_sampler(name: str, vocab_size: int, max_slots: int, device: torch.device,
                 seed: int = 0) -> SamplingBackend:
    """The backend `name` (as `pick_sampling_backend` resolved it); `seed` seeds the draws of
    a backend that keeps a generator (flashinfer's, for requests without their own seed)."""
    backend = SAMPLING_BACKENDS.get(name)
    if backend is FlashInferSampler:
        return FlashInferSampler(vocab_size, max_slots, device, seed=seed)
    return backend(vocab_size, max_slots, device)
