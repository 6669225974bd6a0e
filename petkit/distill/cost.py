"""Compressor's cost model: parameters and inference FLOPs of a BERT/RoBERTa-style classifier from its
shape alone (Shi et al., ASE 2022, `flops.py`, itself adapted from ELECTRA's `flops_computation.py`).

Shape: vocabulary V, hidden h, heads a, intermediate i, layers L, sequence length s (514 as in the code:
RoBERTa's 512 positions plus its two reserved ones).

Parameters (fp32, 4 bytes each; size_mb = 4·params / 1e6, decimal MB as in the code)

    embeddings   V·h + s·h + h (one token type) + 2h (LayerNorm)
    per layer    3(h² + h) (q, k, v) + (h² + h) (attention output) + 2h·i + i + h (FFN) + 4h (two LayerNorms)
    head         "compressor": pooler (h² + h) + dense (h² + h) + out (2h + 2)   — what the code counts
                 "roberta":    dense (h² + h) + out (C·h + C)  == RobertaForSequenceClassification, exactly
                 "bert":       pooler (h² + h) + out (C·h + C) + h (BERT's second token type)
                               == BertForSequenceClassification, exactly

So the code's count is a RoBERTa classifier plus one unused pooler (h² + h): about 1% of a 3 MB student.
Built with `type_vocab_size=1` and `max_position_embeddings=s`, a RoBERTa student matches "roberta" to
the parameter.

FLOPs (one forward pass over s tokens; a multiply-add is 2 FLOPs; per token, times s)

    per layer    kqv 6h², bias 3h; scores 2hs; softmax 5·a·s, dropout 4·a·s, scale a·s; weighted values 2hs;
                 attention output 2h² + h, dropout 4h, residual h, LayerNorm 5h; FFN 4hi, bias i + h,
                 GELU 8i, dropout 4h, residual h, LayerNorm 5h
    embeddings   2hV (the lookup counted as a one-hot product), positions/types 2h(s + 2), add 2h,
                 LayerNorm 5h, dropout 4h
    head         dense 2h² + h, dropout + GELU 12h, logits 2h; counted at every position as the code does

Paper/code differences. The released `flops.py` counts the attention-output LayerNorm as 5 FLOPs per
token instead of 5h; we count 5h (the other LayerNorms' rate). That adds 5(h-1)·s·L FLOPs — 0.003
GFLOPs for the 3 MB shape, 0.2% of its total — so it never changes which shape the search prefers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from petkit.core.errors import ConfigError

DROPOUT_FLOPS = 4      # random draw, compare, mask, rescale
LAYER_NORM_FLOPS = 5   # mean, variance (square + sum), scale, shift
GELU_FLOPS = 8         # the tanh approximation
SOFTMAX_FLOPS = 5      # max, subtract, exp, sum, divide
BYTES_PER_PARAM = 4    # fp32: the size the search budgets for
HEADS = ("compressor", "roberta", "bert")


@dataclass(frozen=True)
class TransformerShape:
    """The five searched genes plus the cost model's sequence length."""

    vocab_size: int
    heads: int
    hidden: int
    intermediate: int
    layers: int
    seq_len: int = 514

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads}): "
                              f"each head gets hidden / heads dimensions")

    def params(self, head: str = "compressor", num_labels: int = 2) -> int:
        """Parameter count; `head` picks which classifier head is counted (see the module docstring)."""
        return sum(self.param_breakdown(head, num_labels).values())

    def param_breakdown(self, head: str = "compressor", num_labels: int = 2) -> dict[str, int]:
        if head not in HEADS:
            raise ConfigError(f"head must be one of {HEADS}, got {head!r}")
        h, i = self.hidden, self.intermediate
        linear = h * h + h
        parts = {
            "embeddings": self.vocab_size * h + self.seq_len * h + h + 2 * h,
            "layers": self.layers * (4 * linear + 2 * h * i + i + h + 4 * h),
        }
        out = num_labels * h + num_labels
        if head == "compressor":
            parts["head"] = 2 * linear + 2 * h + 2  # the code's binary head, whatever num_labels is
        elif head == "roberta":
            parts["head"] = linear + out
        else:
            parts["head"] = linear + out + h  # pooler, classifier, second token-type row
        return parts

    def size_mb(self, head: str = "compressor") -> float:
        return self.params(head) * BYTES_PER_PARAM / 1e6

    def flops(self) -> int:
        """Inference FLOPs of one sequence of seq_len tokens (see the module docstring)."""
        h, i, s, a = self.hidden, self.intermediate, self.seq_len, self.heads
        attention = 6 * h * h + 3 * h + 2 * h * s + (SOFTMAX_FLOPS + DROPOUT_FLOPS + 1) * a * s + 2 * h * s
        attention_out = 2 * h * h + h + DROPOUT_FLOPS * h + h + LAYER_NORM_FLOPS * h
        ffn = 4 * h * i + i + h + GELU_FLOPS * i + DROPOUT_FLOPS * h + h + LAYER_NORM_FLOPS * h
        embeddings = 2 * h * self.vocab_size + 2 * h * (s + 2) + 2 * h + (LAYER_NORM_FLOPS + DROPOUT_FLOPS) * h
        head = 2 * h * h + h + (DROPOUT_FLOPS + GELU_FLOPS) * h + 2 * h
        return s * (self.layers * (attention + attention_out + ffn) + embeddings + head)

    def gflops(self) -> float:
        return self.flops() / 1e9

    def genes(self) -> dict[str, int]:
        """The searched values, keyed as in the search space."""
        return {"vocab_size": self.vocab_size, "heads": self.heads, "hidden": self.hidden,
                "intermediate": self.intermediate, "layers": self.layers}
