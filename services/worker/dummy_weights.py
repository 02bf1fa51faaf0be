"""Dummy weights: random, but a function of the seed and each tensor's HF name alone.

Every checkpoint tensor is drawn whole, at its HF shape, from a generator seeded by the seed
and its name, and loaded through the same sink a checkpoint's tensor would take. So the model
does not depend on the order modules are built in, and a tensor-parallel rank, which keeps
only its cut of each tensor, holds exactly its share of the one-device model: TP=N and TP=1
run the same model (as they must for benchmarks of one against the other).
Norms are 1, biases 0, the rest N(0, DUMMY_STD): the small std keeps bf16 activations finite.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from radixmesh.services.worker.checkpoint_sinks import checkpoint_sinks, module_shards
from radixmesh.services.worker.models.sinks import CutSink
from radixmesh.services.worker.quantization.linear import QuantLinear

DUMMY_SEED = 0
DUMMY_STD = 0.02


def init_dummy_weights(model: nn.Module, seed: int = DUMMY_SEED) -> None:
    """Fills every tensor a checkpoint would. A quantized layer quantizes a float draw of each
    of its HF weights (whatever its method would read from a checkpoint: a float weight, or an
    FP8 one and its scales), exactly as the unquantized model's would be drawn."""
    device = next(model.parameters()).device
    float_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point()
                       and p.element_size() > 1)
    quantized: set[str] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, QuantLinear):
            continue
        for shard, rows, _cut in module_shards(module_name, module):
            length = len(range(module.out_features)[rows])
            module.quantize_rows(rows, draw(f"{shard}.weight", (length, module.in_features),
                                            float_dtype, device, seed))
            quantized.update(f"{shard}.{suffix}" for suffix in module.checkpoint_sinks(rows)
                             if suffix != "bias")
    for name, sink in checkpoint_sinks(model).items():
        if name not in quantized:
            shape = sink.full_shape if isinstance(sink, CutSink) else tuple(sink.view.shape)
            sink.load(draw(name, shape, float_dtype, device, seed))


def draw(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
         seed: int) -> torch.Tensor:
    """The dummy value of the HF tensor `name`."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype, device=device)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype, device=device)
    generator = torch.Generator(device=device).manual_seed(_name_seed(seed, name))
    return torch.empty(shape, dtype=dtype, device=device).normal_(
        0.0, DUMMY_STD, generator=generator)


def _name_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
