"""Building a smaller BERT-style student from a teacher's config, and measuring it.

    cfg = student_config(teacher.config, layers=3, width=256, heads=4)      # intermediate = 4 × width
    student = bert_student(teacher.config, layers=3, width=256, heads=4, seed=0)
    copy_projected_embeddings(student, teacher)   # optional: the teacher's embeddings, PCA-projected

The student keeps what must match for distillation on the same inputs (vocabulary, special ids,
position and token-type tables, activation, layer-norm eps) and takes the shape it is given. It is a
``BertModel`` without the pooler: the distillation heads read token states directly, as DeiT's do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from petkit.core.errors import ConfigError


def student_config(teacher_config, *, layers: int, width: int, heads: int, intermediate: int | None = None):
    """A ``BertConfig`` with the teacher's vocabulary and the given shape (``intermediate`` = 4·width if None)."""
    from transformers import BertConfig

    intermediate = 4 * width if intermediate is None else intermediate
    for name, value in (("layers", layers), ("width", width), ("heads", heads), ("intermediate", intermediate)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"the student's {name} must be a positive int, got {value!r}")
    if width % heads:
        raise ConfigError(f"the student's width {width} must be a multiple of its heads {heads} "
                          f"(each head gets width / heads dimensions)")
    keep = {k: getattr(teacher_config, k) for k in ("vocab_size", "max_position_embeddings", "type_vocab_size",
                                                     "pad_token_id", "hidden_act", "layer_norm_eps",
                                                     "hidden_dropout_prob", "attention_probs_dropout_prob")
            if hasattr(teacher_config, k)}
    return BertConfig(**keep, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=intermediate, attn_implementation="eager")


def bert_student(teacher_config, *, layers: int = 3, width: int = 256, heads: int = 4,
                  intermediate: int | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised student (BERT init, std 0.02) built from ``seed`` without touching the global RNG."""
    from transformers import BertModel

    config = student_config(teacher_config, layers=layers, width=width, heads=heads, intermediate=intermediate)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertModel(config, add_pooling_layer=False)


def copy_projected_embeddings(student: nn.Module, teacher: nn.Module) -> None:
    """Word, position and token-type tables of the teacher, projected on the top principal directions of
    its word embeddings (width_t → width_s), then rescaled to the teacher's per-entry spread.

    A warm start for the student's input side only; off by default in the benchmark and the CLI
    because the paper's student starts from scratch and because it would give the generic stage's
    comparison a second, unrelated source of teacher knowledge.
    """
    s_emb, t_emb = _embeddings(student), _embeddings(teacher)
    if s_emb.word_embeddings.weight.shape[0] != t_emb.word_embeddings.weight.shape[0]:
        raise ConfigError("student and teacher vocabularies differ in size: their embeddings cannot be copied")
    width_s, width_t = s_emb.word_embeddings.weight.shape[1], t_emb.word_embeddings.weight.shape[1]
    if width_s > width_t:
        raise ConfigError(f"the student ({width_s} wide) is wider than the teacher ({width_t}): "
                          f"there is no projection onto more principal directions than the teacher has")
    with torch.no_grad():
        words = t_emb.word_embeddings.weight
        _, _, v = torch.linalg.svd(words - words.mean(0), full_matrices=False)
        project = v[:width_s].T  # width_t × width_s, orthonormal columns
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            source, target = getattr(t_emb, name).weight, getattr(s_emb, name).weight
            rows = min(source.shape[0], target.shape[0])
            projected = source[:rows] @ project
            target[:rows] = projected * (source.std() / projected.std().clamp_min(1e-12))


def _embeddings(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    if not hasattr(base, "embeddings"):
        raise ConfigError(f"{type(model).__name__} has no BERT-style .embeddings to copy")
    return base.embeddings


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def safetensors_bytes(model: nn.Module) -> int:
    """The size of the model's weights written as one safetensors file (what a user would ship)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file(state, str(path))
        return path.stat().st_size
