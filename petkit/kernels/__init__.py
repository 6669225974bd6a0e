"""Shared machinery that methods build on, none of them a method itself: the fused LoRA linear
(`lora`), sparse weight deltas (`sparse`), low-bit quantisers (`quantize`), the T-MAC
lookup-table matmul for 1–4 bit weights on CPU (`lut`) and the native dequantisation of packed
low-bit rows (`dequant`); `native` builds their C++ extensions. Methods import these; these import
`petkit.core` only."""
