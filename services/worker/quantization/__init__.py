"""Quantized linear layers: `--quantization NAME` and checkpoints whose config.json carries a
`quantization_config`.

`config.py` holds what the flag and the checkpoint say (plain data, no torch); `base.py` the
`QuantizationMethod` interface and its registry; `fp8.py` the FP8 (e4m3) method; `linear.py`
the layers the models build in place of `nn.Linear` when a method applies.
"""
