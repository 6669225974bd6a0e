"""The model a continual learner trains: a pre-trained backbone, pooled features, and one linear head
with a row per class of the whole stream (task t owns the rows ``stream.classes_of(t)``).

Encoders (MiniLM) pool by the masked mean of the last hidden states, as sentence-transformers does;
decoders (SmolLM2) read the last prompt token, where the next token, the answer, would be predicted.
For an instruction task a decoder's head rows start as the language-model head's rows of the answer
words' first tokens, so at step 0 the classifier is the model's own zero-shot answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.errors import ConfigError
from petkit.data.sft import encode, prompt_ids
from petkit.models.structure import hidden_size

from .stream import Stream, Task


class ContinualClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, width: int, num_classes: int, pooling: str):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ConfigError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        self.backbone, self.pooling = backbone, pooling
        self.head = nn.Linear(width, num_classes)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "last":  # right padding: the last real token of each row
            last = attention_mask.sum(1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))


@dataclass
class Encoded:
    """A task split as token ids, with global labels."""
    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def build_classifier(name: str, stream: Stream, seed: int) -> tuple[ContinualClassifier, object]:
    """(classifier, tokenizer) for a model alias or folder; the head is initialised with `seed`."""
    from transformers import AutoConfig

    from petkit.models.loading import load_model, load_tokenizer, resolve

    config = AutoConfig.from_pretrained(resolve(name), local_files_only=True)
    decoder = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    tokenizer = load_tokenizer(name)
    if decoder:
        full = load_model(name, task="causal_lm")
        return classifier_for(full.model, stream, seed, lm_head=full.get_output_embeddings(), tokenizer=tokenizer), tokenizer
    return classifier_for(load_model(name, task="base"), stream, seed), tokenizer


def classifier_for(base: nn.Module, stream: Stream, seed: int, lm_head: nn.Module | None = None,
                   tokenizer=None) -> ContinualClassifier:
    """A frozen base model (an encoder, or a decoder's body with its LM head given: last-token pooling,
    instruction tasks' head rows from the LM head) with a head over every class of the stream."""
    for p in base.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    model = ContinualClassifier(base, hidden_size(base.config), stream.num_classes,
                                "last" if lm_head is not None else "mean")
    if lm_head is not None:
        init_head_from_words(model.head, lm_head, tokenizer, stream)
    return model.eval()


def init_head_from_words(head: nn.Linear, lm_head: nn.Module, tokenizer, stream: Stream) -> None:
    """Rows of instruction tasks' answer words take the LM head's row of the word's first token."""
    with torch.no_grad():
        for t, task in enumerate(stream.tasks):
            if task.words is None:
                continue
            for row, word in zip(stream.classes_of(t), task.words):
                head.weight[row] = lm_head.weight[encode(tokenizer, word)[0]].to(head.weight.dtype)
                head.bias[row] = 0.0


def encode_split(tokenizer, task: Task, examples: list[dict], offset: int, max_length: int) -> Encoded:
    """Token ids (truncated to max_length, keeping the end of an instruction prompt, where it asks
    for the answer) and global labels."""
    ids = []
    for ex in examples:
        if task.words is not None:
            row = prompt_ids(tokenizer, {"prompt": ex["text"], "completion": task.words[ex["label"]]})
            row = row[-max_length:]
        else:
            row = tokenizer(ex["text"], truncation=True, max_length=max_length)["input_ids"]
        ids.append(row)
    return Encoded(ids, [offset + ex["label"] for ex in examples])


def collate(encoded: Encoded, rows, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids and attention_mask for the rows, and their labels."""
    seqs = [encoded.ids[i] for i in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([encoded.labels[i] for i in rows])}
