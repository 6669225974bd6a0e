"""`petkit.quantize`: replace a model's frozen linear layers by low-bit `PackedLinear` layers, in place."""

from __future__ import annotations

from torch import nn

from petkit.core.errors import ConfigError, StateError, TargetError
from petkit.core.layer import AdaptedLayer, weight_oi
from petkit.core.module_types import LINEAR_TYPES, QuantizedWeight
from petkit.core.targeting import resolve_targets
from petkit.core.unwrapped import tied_parameter_ids
from petkit.quant.linear import PackedEmbedding, PackedLinear, PackedRows, QuantFormat

DEFAULT_GROUP = 64  # QLoRA's block size


def quantize(model: nn.Module, bits: int = 4, group_size: int = DEFAULT_GROUP, scheme: str | None = None,
             targets=("all-linear",), exclude=(), embeddings: bool = False) -> nn.Module:
    """Store the weights of `targets` (default: every linear layer but the output/task head) at `bits`
    bits with per-group scales, and return the same model. scheme: "nf4" (the default at 4 bits) or
    "int" (scale and zero point per group; any of 1, 2, 3, 4, 8 bits). embeddings=True also packs the
    input embedding table in the same format, and an output head tied to it shares its codes (on a
    small model with a large vocabulary that table is most of what stays float).

    All layers are quantised before any is replaced, so on an error the model is left as it was.
    Quantise before adapting: an adapted model, or one already quantised, is refused.
    """
    try:
        fmt = QuantFormat(scheme or ("nf4" if bits == 4 else "int"), bits, group_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if any(isinstance(m, AdaptedLayer) for m in model.modules()):
        raise StateError("this model has adapters; quantise the base model first, then adapt it (petkit.adapt) "
                         "or load the adapter onto it (petkit.load)")
    already = [n for n, m in model.named_modules() if isinstance(m, QuantizedWeight)]
    if already:
        raise StateError(f"the model is already quantised ({len(already)} low-bit layers, e.g. {already[0]}); "
                         "quantise a float model")
    if isinstance(targets, str):
        targets = (targets,)
    paths = resolve_targets(model, tuple(targets), tuple(exclude), LINEAR_TYPES)
    modules = dict(model.named_modules())
    shared = tied_parameter_ids(model)
    bad = [f"{p} (in_features={weight_oi(modules[p]).shape[1]})" for p in paths
           if weight_oi(modules[p]).shape[1] % group_size]
    if bad:
        raise ConfigError(f"group_size={group_size} does not divide the input size of {len(bad)} target layers: "
                          f"{', '.join(bad[:3])}; pick a group size that divides them or exclude those layers")
    tied = [p for p in paths if id(modules[p].weight) in shared]
    if tied:
        raise TargetError(f"the weight of {tied[0]} is shared with another module (tied embeddings); "
                          "exclude it from quantisation")
    built = {p: PackedLinear.from_linear(modules[p], fmt, weight_oi(modules[p])) for p in paths}
    if embeddings:
        built.update(_packed_embeddings(model, modules, fmt))
    for path, layer in built.items():
        layer.train(modules[path].training)  # a new module starts in training mode; keep the model's mode
        parent, _, leaf = path.rpartition(".")
        setattr(modules[parent] if parent else model, leaf, layer)
    return model


def _packed_embeddings(model: nn.Module, modules: dict, fmt: QuantFormat) -> dict:
    """{path: packed module} for the input embedding table and an output head tied to it."""
    table = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(table, nn.Embedding):
        raise TargetError(f"embeddings=True needs a model with an nn.Embedding input table "
                          f"(get_input_embeddings), {type(model).__name__} has {type(table).__name__}")
    if table.embedding_dim % fmt.group_size:
        raise ConfigError(f"group_size={fmt.group_size} does not divide the embedding size {table.embedding_dim}")
    paths = {id(m): n for n, m in modules.items()}
    packed = PackedEmbedding.from_embedding(table, fmt)
    built = {paths[id(table)]: packed}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is table.weight:
        built[paths[id(head)]] = PackedLinear.sharing(packed)
    return built


def quantized_layers(model: nn.Module) -> dict[str, PackedRows]:
    """The low-bit modules of a model by path (inside adapter wrappers too)."""
    return {n.replace(".base_layer", ""): m for n, m in model.named_modules() if isinstance(m, PackedRows)}


def use_lut(model: nn.Module, enabled: bool = True) -> list[str]:
    """Run the inference forwards (eval mode, no gradient wanted) of every low-bit linear layer the T-MAC kernel
    can take (int scheme, 1–4 bits) through it; returns their paths. Training forwards, and layers at
    other formats, keep dequantising. Refused when no layer qualifies."""
    eligible = {p: m for p, m in quantized_layers(model).items()
                if isinstance(m, PackedLinear) and m.format.scheme == "int" and m.format.bits <= 4}
    if enabled and not eligible:
        raise ConfigError("no low-bit layer can use the LUT kernel: it takes the int scheme at 1–4 bits "
                          "(petkit.quantize(model, bits=2, scheme='int'))")
    for layer in eligible.values():
        layer.use_lut(enabled)
    return list(eligible)
