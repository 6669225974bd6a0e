"""T-MAC-style lookup-table matmul for low-bit (1–4 bit) weights on CPU."""
