"""A Compressor student: a randomly initialised BERT/RoBERTa-style classifier of a searched shape, and a
new tokenizer with the searched vocabulary size trained on the task's own text (Shi et al., ASE 2022;
the code's `utils.py::BPE` and `distill.py`).

- `arch="roberta"` [code]: `RobertaForSequenceClassification` with one token type and
  `max_position_embeddings = shape.seq_len`, so its parameter count is `shape.params(head="roberta")`
  exactly; tokenizer: byte-level BPE (`kind="bpe"`, RoBERTa's special tokens <s> <pad> </s> <unk> <mask>,
  ids 0-4). Byte-level BPE starts from the 256 byte symbols, so it never needs <unk> and its vocabulary
  must be at least 261.
- `arch="bert"`: `BertForSequenceClassification` (two token types, pooler), `shape.params(head="bert")`;
  tokenizer: lower-cased WordPiece (`kind="wordpiece"`, [PAD] [UNK] [CLS] [SEP] [MASK], ids 0-4).

The embedding matrix always has `shape.vocab_size` rows, the size the search budgeted; a tokenizer
whose text runs out of merges before that size uses fewer of them (`len(tokenizer)` tells).

`save_student` writes one folder, all or nothing: config.json + model.safetensors (no pickles),
tokenizer.json + tokenizer_config.json, compressor.json (the shape). `load_student` reads it back;
`transformers.AutoModelForSequenceClassification` / `AutoTokenizer.from_pretrained` read it too.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from petkit.core.errors import AdapterFileError, ConfigError
from petkit.core.storage import read_json, write_files
from petkit.models.rebuild import config_record

from .cost import TransformerShape

ARCHS = {"roberta": "bpe", "bert": "wordpiece"}  # architecture -> its tokenizer kind
SPECIALS = {"bpe": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                    "mask_token": "<mask>"},
            "wordpiece": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                          "mask_token": "[MASK]"}}
SHAPE_FILE, WEIGHTS_FILE = "compressor.json", "model.safetensors"
BYTE_ALPHABET = 256


def build_student(shape: TransformerShape, num_labels: int, arch: str = "roberta", seed: int | None = None) -> nn.Module:
    """A randomly initialised classifier of `shape` (transformers' own init; `seed` makes it repeatable)."""
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    if arch not in ARCHS:
        raise ConfigError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ConfigError(f"num_labels must be a positive int, got {num_labels!r}")
    common = dict(vocab_size=shape.vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                  num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                  max_position_embeddings=shape.seq_len, num_labels=num_labels)
    if seed is not None:
        torch.manual_seed(seed)
    if arch == "roberta":  # ids as in SPECIALS["bpe"]; positions start after the pad id, as in RoBERTa
        return RobertaForSequenceClassification(RobertaConfig(**common, type_vocab_size=1, pad_token_id=1,
                                                              bos_token_id=0, eos_token_id=2))
    return BertForSequenceClassification(BertConfig(**common, type_vocab_size=2, pad_token_id=0))


def train_tokenizer(texts, vocab_size: int, kind: str = "bpe", max_length: int = 512):
    """A `PreTrainedTokenizerFast` trained on `texts` with at most `vocab_size` entries (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in SPECIALS:
        raise ConfigError(f"tokenizer kind must be one of {sorted(SPECIALS)}, got {kind!r}")
    specials = list(SPECIALS[kind].values())
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ConfigError("the tokenizer needs some non-empty training texts")
    if kind == "bpe":
        if vocab_size < BYTE_ALPHABET + len(specials):
            raise ConfigError(f"a byte-level BPE vocabulary holds the {BYTE_ALPHABET} bytes and {len(specials)} special "
                              f"tokens, so vocab_size must be at least {BYTE_ALPHABET + len(specials)}, got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        input_names = ["input_ids", "attention_mask"]
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                 show_progress=False))
        tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
        input_names = ["input_ids", "token_type_ids", "attention_mask"]
    if tok.get_vocab_size() > vocab_size:  # the text's alphabet alone is larger than the budget
        raise ConfigError(f"the training text needs {tok.get_vocab_size()} entries (its alphabet and the special "
                          f"tokens), more than vocab_size={vocab_size}; use a larger vocabulary or byte-level BPE")
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length,
                                   model_input_names=input_names, **SPECIALS[kind])


def save_student(folder, model: nn.Module, tokenizer, shape: TransformerShape) -> int:
    """Write the student folder; returns the size of model.safetensors in bytes."""
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} entries but the model embeds only "
                          f"{model.config.vocab_size}: they do not belong together")
    folder = Path(folder)
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": tokenizer.model_max_length,
                  "model_input_names": list(tokenizer.model_input_names),
                  **{k: getattr(tokenizer, k) for k in SPECIALS["bpe"] | SPECIALS["wordpiece"]
                     if getattr(tokenizer, k, None) is not None}}
    write_files(folder, {"config.json": config_record(model), WEIGHTS_FILE: (model.state_dict(), {"format": "pt"}),
                         "tokenizer.json": json.loads(tokenizer.backend_tokenizer.to_str()),
                         "tokenizer_config.json": tok_config, SHAPE_FILE: asdict(shape)})
    return (folder / WEIGHTS_FILE).stat().st_size


def load_student(folder) -> tuple[nn.Module, object, TransformerShape]:
    """(model in eval mode, tokenizer, shape) from a folder `save_student` wrote."""
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

    folder = Path(folder)
    shape = TransformerShape(**read_json(folder / SHAPE_FILE))
    if not (folder / WEIGHTS_FILE).is_file():
        raise AdapterFileError(f"{folder} has no {WEIGHTS_FILE}: it is not a saved student")
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer, shape
