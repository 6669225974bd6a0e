"""CLP-Transfer (Ostendorff & Rehm, arXiv 2301.09626): a pre-trained model moved to a new tokenizer.

The new vocabulary's embedding rows come from the source model where it can give them and from a
small helper model (one that already uses the new tokenizer) where it cannot:
- a token whose string is also in the source vocabulary (the overlap O) takes the source row;
- any other token t takes Σ_o w_o · E_src[o] over the whole overlap, with w_o its cosine similarity to
  each overlap token in the helper's embedding space, normalised to sum to 1.
Rows start from N(mean, std) of the source embeddings (seeded), which only a token with no usable
weights keeps. A model whose output embeddings are not tied to its input (Llama-style) gets the
same treatment for its output rows.

Negative similarities (`negative`): the paper's code normalises the raw cosines, so with negative
ones the weights can sum to almost nothing and blow up. petkit's default, "clip", drops the negative
ones (weights ≥ 0, a convex combination of overlap rows); "keep" is the released code's behaviour.
A token whose clipped similarities are all zero keeps its fallback row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.errors import ConfigError

NEGATIVE = ("clip", "keep")


@dataclass
class ClpReport:
    target_size: int
    overlap: int             # target tokens copied from the source
    combined: int            # target tokens built from the overlap
    fallback: int            # target tokens left at the random fallback


def clp_rows(source: torch.Tensor, source_vocab: dict[str, int], helper: torch.Tensor, target_vocab: dict[str, int],
             *, negative: str = "clip", seed: int = 42, chunk: int = 4096,
             combine: bool = True) -> tuple[torch.Tensor, ClpReport]:
    """The target embedding matrix (len(target_vocab) × source width) from source rows and helper rows
    (indexed by the target tokenizer's ids). combine=False leaves every non-overlap row at its random
    fallback (the "overlap only" baseline)."""
    if negative not in NEGATIVE:
        raise ConfigError(f"negative must be one of {NEGATIVE}, got {negative!r}")
    if helper.shape[0] < max(target_vocab.values(), default=-1) + 1:
        raise ConfigError(f"the helper has {helper.shape[0]} embedding rows, fewer than the target tokenizer's ids: "
                          "is it the model that goes with the target tokenizer?")
    overlap = sorted((t_id, source_vocab[tok]) for tok, t_id in target_vocab.items() if tok in source_vocab)
    if not overlap:
        raise ConfigError("the source and target tokenizers share no token: CLP-Transfer builds every new row from "
                          "the overlap, so it cannot start (use a target tokenizer closer to the source's)")
    source = source.detach().float()
    generator = torch.Generator().manual_seed(seed)
    size = max(target_vocab.values()) + 1
    out = source.mean(0) + source.std(0) * torch.randn(size, source.shape[1], generator=generator)
    t_ids = torch.tensor([t for t, _ in overlap])
    s_ids = torch.tensor([s for _, s in overlap])
    out[t_ids] = source[s_ids]
    missing = torch.tensor(sorted(set(target_vocab.values()) - set(t_ids.tolist())), dtype=torch.long)
    if not combine:
        return out, ClpReport(size, len(overlap), 0, len(missing))
    keys = nn.functional.normalize(helper.detach().float()[t_ids], dim=1)
    rows = source[s_ids]
    fallback = 0
    for part in missing.split(chunk):
        sim = nn.functional.normalize(helper.detach().float()[part], dim=1) @ keys.T
        if negative == "clip":
            sim = sim.clamp_min(0)
        total = sim.sum(1, keepdim=True)
        usable = total.squeeze(1).abs() > 1e-12
        out[part[usable]] = (sim[usable] / total[usable]) @ rows
        fallback += int((~usable).sum())
    return out, ClpReport(size, len(overlap), len(missing) - fallback, fallback)


def clp_transfer(model: nn.Module, source_tokenizer, helper: nn.Module, target_tokenizer, *,
                 negative: str = "clip", seed: int = 42) -> ClpReport:
    """Move `model` (in place) to `target_tokenizer`: new input embeddings (and output rows when they are
    not tied), its vocabulary size in the config updated. `helper` is a model that uses the target tokenizer."""
    source_vocab, target_vocab = source_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    helper_rows = helper.get_input_embeddings().weight
    inputs = model.get_input_embeddings()
    new_in, report = clp_rows(inputs.weight, source_vocab, helper_rows, target_vocab, negative=negative, seed=seed)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = output is not None and output.weight is inputs.weight
    new_out = None
    if output is not None and not tied:
        new_out, _ = clp_rows(output.weight, source_vocab, helper_rows, target_vocab, negative=negative, seed=seed + 1)
    model.resize_token_embeddings(report.target_size)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(new_in.to(inputs.weight.dtype))
        if new_out is not None:
            model.get_output_embeddings().weight.copy_(new_out.to(output.weight.dtype))
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        token = getattr(target_tokenizer, key.removesuffix("_id"), None)
        if hasattr(model.config, key):
            setattr(model.config, key, target_tokenizer.convert_tokens_to_ids(token) if token else None)
    return report
