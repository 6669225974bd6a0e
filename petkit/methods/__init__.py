"""Built-in methods. Importing this package registers each of them."""

from petkit.methods import bitfit, full, head, ia3, layernorm, lora  # noqa: F401
