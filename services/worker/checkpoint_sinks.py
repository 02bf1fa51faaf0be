"""Where each HF checkpoint tensor goes in a built model: its name -> the sink that loads it.

Shared by the safetensors loader and the dummy weights, so that both fill the same tensors by
the same names, and a tensor-parallel rank takes the same share of each either way.
"""

from __future__ import annotations

import torch
from torch import nn

from radixmesh.services.worker.models.fused_linear import FusedRows
from radixmesh.services.worker.models.sinks import CopySink, Cut, CutSink, Sink
from radixmesh.services.worker.quantization.linear import QuantLinear


def checkpoint_sinks(model: nn.Module) -> dict[str, Sink]:
    """HF checkpoint name -> the sink that loads that tensor.

    A parameter under its own name is a plain copy, except in a fused projection: there each
    declared shard's name (`...self_attn.k_proj.weight`) copies into a view of the shard's rows
    of the fused parameter (`...self_attn.qkv_proj.weight`). A quantized layer names its own
    tensors per shard (e.g. `weight` and `weight_scale` of a prequantized FP8 checkpoint). The
    keys are exactly the tensors a complete checkpoint holds (tied ones left out, as HF does).
    """
    sinks: dict[str, Sink] = {}
    for module_name, module in model.named_modules():
        shards = module_shards(module_name, module)
        if isinstance(module, QuantLinear):
            for shard, rows, _cut in shards:
                for suffix, sink in module.checkpoint_sinks(rows).items():
                    sinks[join_name(shard, suffix)] = sink
            continue
        param_cuts: dict[str, Cut] = getattr(module, "checkpoint_cuts", {})
        for param_name, param in module.named_parameters(recurse=False):
            for shard, rows, shard_cut in shards:
                cut = shard_cut or param_cuts.get(param_name)
                view = param.detach()[rows]
                if cut is None:
                    sinks[join_name(shard, param_name)] = CopySink(view)
                else:  # the rank's share; past it, padding rows (a vocabulary's) stay zero
                    sinks[join_name(shard, param_name)] = CutSink(
                        CopySink(view.narrow(cut.dim, 0, cut.length)), cut)
    return sinks


def checkpoint_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF checkpoint name -> the tensor (or block of rows) that checkpoint tensor fills."""
    return {name: sink.view for name, sink in checkpoint_sinks(model).items()}


def module_shards(module_name: str, module: nn.Module) -> list[tuple[str, slice, Cut | None]]:
    """(HF module name, its rows, the rank's cut of the HF rows if split) for each checkpoint
    module `module` holds."""
    if isinstance(module, FusedRows):
        parent = module_name.rpartition(".")[0]
        return [(join_name(parent, shard), rows, module.shard_cuts.get(shard))
                for shard, rows in module.shard_rows.items()]
    return [(module_name, slice(None), None)]


def join_name(*parts: str) -> str:
    return ".".join(part for part in parts if part)
