"""The flashinfer sampling backend: FlashInfer's fused rejection-sampling kernels.

FlashInfer samples top-k/top-p/min-p without sorting the vocabulary (a few passes of rejection
sampling in one kernel), where the pytorch backend sorts the rows that limit top-p and runs
its race over the whole [B, V] row. The filters mean the same on both: top-k first, top-p
measured on the top-k tokens' renormalized mass ("top_k_first"), min-p relative to the most
likely token.

What FlashInfer cannot do is honour a request's own seed: its kernels draw from one Philox
stream per call (a torch.Generator's seed and offset, advanced on every call) split by the
row's index in the batch, so a row's draw depends on its neighbours and on every call made
before it. Rows whose request brought a `seed` are therefore drawn in the same step by the
pytorch backend's counter-based race (this class extends it), which depends only on the
request's seed and output position: seeded requests give the same tokens on both backends.
Rows without a seed draw from this worker's generator, seeded once from --random-seed: a
restarted worker replays the same stream only for the same sequence of batches.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import torch

from radixmesh.services.worker.jit_module import JitModule
from radixmesh.services.worker.sampling.pytorch_backend import PyTorchSampler
from radixmesh.services.worker.sampling.sampling_batch import SamplingBatch

INSTALL_HINT = "pip install flashinfer-python"


class FlashInferSampler(PyTorchSampler):
    name = "flashinfer"

    def __init__(self, vocab_size: int, max_slots: int, device: torch.device | str,
                 seed: int = 0, compile_race: bool | None = None) -> None:
        missing = self.missing(torch.device(device))
        if missing is not None:
            raise ValueError(f"--sampling-backend flashinfer needs {missing}")
        super().__init__(vocab_size, max_slots, device, compile_race)
        self._kernels: ModuleType = importlib.import_module("flashinfer.sampling")
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @classmethod
    def missing(cls, device: torch.device) -> str | None:
        if importlib.util.find_spec("flashinfer") is None:
            return f"the flashinfer package, which is not installed ({INSTALL_HINT})"
        if device.type != "cuda":
            return f"a CUDA device; this worker runs on {device.type}"
        return None

    @classmethod
    def kernel_builds(cls) -> list[JitModule]:
        # FlashInfer compiles its sampling module on first use (about a minute with nvcc on
        # a bare machine) and keeps it. The import happens here, on the caller's thread:
        # imports racing on two threads are what the build's thread need not risk.
        sampling = importlib.import_module("flashinfer.sampling")
        return [JitModule("sampling", sampling.gen_sampling_module, sampling.get_sampling_module)]

    def draw(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        if batch.all_own_seeds:
            return super().draw(logits, batch)
        tokens = self._flashinfer_draw(logits / batch.temperatures[:, None], batch)
        if batch.own_seeds is not None:
            tokens = torch.where(batch.own_seeds, super().draw(logits, batch), tokens)
        if batch.any_greedy:
            tokens = torch.where(batch.is_greedy, logits.argmax(dim=-1), tokens)
        return tokens

    def _flashinfer_draw(self, scaled: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """One token per row of temperature-scaled logits [B, V] (float32, contiguous), for
        every row, greedy and seeded ones included (the caller overrides those)."""
        kernels, generator = self._kernels, self.generator
        scaled = scaled.contiguous()
        # NO_TOP_K ("no limit") and anything beyond the vocabulary mean k = V: no masking.
        top_ks = batch.top_ks.clamp(1, self.vocab_size).to(torch.int32)
        if batch.needs_min_p:
            probs = torch.softmax(scaled, dim=-1)
            if batch.top_k_rows is not None or batch.top_p_rows is not None:
                probs = kernels.top_k_renorm_probs(probs, top_ks)
            if batch.top_p_rows is not None:
                probs = kernels.top_p_renorm_probs(probs, batch.top_ps)
            tokens = kernels.min_p_sampling_from_probs(probs, batch.min_ps, generator=generator)
        elif batch.top_k_rows is not None or batch.top_p_rows is not None:
            tokens = kernels.top_k_top_p_sampling_from_logits(
                scaled, top_ks, batch.top_ps, filter_apply_order="top_k_first",
                generator=generator)
        else:
            tokens = kernels.sampling_from_probs(torch.softmax(scaled, dim=-1),
                                                 generator=generator)
        return tokens.long()
