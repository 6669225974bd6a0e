"""Shared machinery that methods build on, none of them a method itself: the fused LoRA linear
(`lora`), sparse weight deltas (`sparse`), low-bit quantisers (`quantize`) and the T-MAC
lookup-table matmul for 1–4 bit weights on CPU (`lut`). Methods import these; these import
`petkit.core` only."""
