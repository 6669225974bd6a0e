"""Low-bit frozen bases: quantise a model's linear layers (NF4 or int, 1–8 bits), train adapters on top
(QLoRA-style), save and load the packed model, read GGUF's 4-bit blocks as they are, and run inference
through the T-MAC lookup-table kernel (`petkit.kernels.lut`)."""

from petkit.quant.formats import NF4, SCHEMES
from petkit.quant.linear import PackedEmbedding, PackedLinear, QuantFormat
from petkit.quant.quantize import quantize, quantized_layers, use_lut
from petkit.quant.storage import load_quantized, save_quantized

__all__ = ["NF4", "SCHEMES", "PackedEmbedding", "PackedLinear", "QuantFormat", "load_quantized", "quantize",
           "quantized_layers", "save_quantized", "use_lut"]
