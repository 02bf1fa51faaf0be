"""`--quantization-param-path`: per-layer KV-cache scales from a JSON file, SGLang's (and older
vLLM's) format, for checkpoints that carry none:

    {"model_type": "llama",
     "kv_cache": {"dtype": "float8_e4m3fn",
                  "scaling_factor": {"0": {"0": 0.61, "1": 0.87, ...}}}}

`scaling_factor` maps each tensor-parallel rank to {layer: scale}; one scale per layer serves
K and V alike. As SGLang checks: the dtype is float8_e4m3fn, the file has exactly --tp-size
ranks, each with every layer, and its model_type (when given) is the model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from radixmesh.services.worker.kv_scales import KVScaleError, KVScales, check_scale, make_scales


def read_scales_file(path: str | Path, num_layers: int, model_type: str, tp_rank: int = 0,
                     tp_size: int = 1) -> KVScales:
    """Rank `tp_rank`'s scales from the file; the digest covers every rank's."""
    source = f"--quantization-param-path {path}"
    try:
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise KVScaleError(f"{source}: cannot read it ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise KVScaleError(f"{source}: not valid JSON ({error})") from None
    kv_cache = _field(document, "kv_cache", dict, source)
    file_type = document.get("model_type")
    if file_type is not None and file_type != model_type:
        raise KVScaleError(f"{source}: scales of a {file_type!r} model, this one is "
                           f"{model_type!r}")
    dtype = kv_cache.get("dtype")
    if dtype != "float8_e4m3fn":
        raise KVScaleError(f"{source}: kv_cache.dtype is {dtype!r}; the format holds "
                           "float8_e4m3fn scales only")
    table = _field(kv_cache, "scaling_factor", dict, source)
    ranks = _keyed_by_int(table, "tensor-parallel rank", source)
    if sorted(ranks) != list(range(tp_size)):
        raise KVScaleError(f"{source}: scales for ranks {sorted(ranks)}, but --tp-size is "
                           f"{tp_size} (ranks {list(range(tp_size))})")
    group = [_layer_scales(ranks[rank], num_layers, f"{source} rank {rank}")
             for rank in range(tp_size)]
    mine = group[tp_rank]
    return make_scales(mine, mine, num_layers, source, group=[(s, s) for s in group])


def _field(document: Any, name: str, kind: type, source: str) -> Any:
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, kind):
        raise KVScaleError(f"{source}: no {name} object (SGLang's scales format expected)")
    return value


def _keyed_by_int(table: dict[str, Any], what: str, source: str) -> dict[int, Any]:
    keyed: dict[int, Any] = {}
    for key, value in table.items():
        try:
            keyed[int(key)] = value
        except ValueError:
            raise KVScaleError(f"{source}: {what} {key!r} is not an integer") from None
    return keyed


def _layer_scales(layers: Any, num_layers: int, source: str) -> list[float]:
    if not isinstance(layers, dict):
        raise KVScaleError(f"{source}: a {{layer: scale}} object expected")
    by_layer = _keyed_by_int(layers, "layer", source)
    if sorted(by_layer) != list(range(num_layers)):
        missing = sorted(set(range(num_layers)) - set(by_layer))
        extra = sorted(set(by_layer) - set(range(num_layers)))
        raise KVScaleError(f"{source}: one scale per layer of the model's {num_layers} "
                           f"expected (missing {missing}, beyond the model {extra})")
    scales = [by_layer[layer] for layer in range(num_layers)]
    for layer, scale in enumerate(scales):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise KVScaleError(f"{source}: layer {layer}'s scale {scale!r} is not a number")
        check_scale(float(scale), f"{source}: layer {layer}'s scale")
    return [float(scale) for scale in scales]
