"""How well an edit took: on the edit prompt and its rephrasings, whether the target is now the
argmax (every target token) and its probability, before and after; on unrelated prompts, the KL
from the old to the new predictions and the share of top predictions left unchanged."""

from __future__ import annotations

import torch

from petkit.edit.apply import edited, vocab_size
from petkit.edit.data import Edit, completion_batch, joined, pad_id, text_batch
from petkit.edit.losses import argmax_kept, locality_kl, target_scores


def _logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@torch.no_grad()
def score_edit(model, tokenizer, edit: Edit, deltas: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scores of one edit whose weight change is `deltas` (applied for the measurement, then undone)."""
    prompts = [edit.prompt, *edit.rephrasings]
    comp = completion_batch(tokenizer, [(p, edit.target) for p in prompts], vocab_size(model))
    n = len(prompts)
    loc = text_batch(tokenizer, edit.locality) if edit.locality else None
    both = joined(comp, loc, pad_id(tokenizer)) if loc else comp  # one forward for both
    base = _logits(model, both)
    with edited(model, deltas):
        new = _logits(model, both)
    hits_b, probs_b = target_scores(base[:n], both["labels"][:n])
    hits_a, probs_a = target_scores(new[:n], both["labels"][:n])
    record = {"prompt_before": float(hits_b[0]), "prompt_after": float(hits_a[0]),
              "prob_before": float(probs_b[0]), "prob_after": float(probs_a[0])}
    if edit.rephrasings:
        record.update(rephrase_before=float(hits_b[1:].float().mean()), rephrase_after=float(hits_a[1:].float().mean()),
                      rephrase_prob_after=float(probs_a[1:].mean()))
    if loc:
        mask = both["attention_mask"][n:]
        record.update(loc_kl=float(locality_kl(base[n:], new[n:], mask)),
                      loc_kept=float(argmax_kept(base[n:], new[n:], mask)))
    return record


def evaluate_edits(model, tokenizer, edits, make_deltas) -> dict:
    """Each edit applied alone (`make_deltas(edit)` → {path: ΔW}), scored, undone; per-edit records
    and their means."""
    rows = [score_edit(model, tokenizer, e, make_deltas(e)) for e in edits]
    keys = sorted({k for r in rows for k in r})
    means = {k: sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows)) for k in keys}
    return {"mean": means, "per_edit": rows}
