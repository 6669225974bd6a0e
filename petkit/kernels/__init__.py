"""Shared machinery that methods build on, none of them a method itself: the fused LoRA linear
(`lora`), sparse weight deltas (`sparse`) and low-bit quantisers (`quantize`). Methods import these;
these import `petkit.core` only."""
