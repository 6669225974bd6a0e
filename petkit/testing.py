"""Tiny random-weight models, batches and a tokenizer for fast, offline unit tests.

Every model has hidden size 32, 2 layers (BERT and ViT: more on request) and a 100-token vocabulary
(about 0.1 MB), is built from a seed (same seed, same weights; the global torch RNG is left
untouched), uses eager attention (one code path, deterministic on CPU) and is returned in eval
mode. Dropout keeps each family's Hugging Face default (0.1 for BERT/GPT-2/T5, 0 for Llama/ViT)
unless ``dropout=`` is given, so a test that calls ``model.train()`` exercises the RNG as a real
fine-tune would.
"""

from __future__ import annotations

import torch
from torch import nn

from petkit.core.model import adapt
from petkit.methods.lora import LoraConfig

VOCAB_SIZE = 100
_COMMON = {"attn_implementation": "eager"}


def _build(model_cls, config, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


def _dropout(value: float | None, *names: str) -> dict:
    return {} if value is None else dict.fromkeys(names, value)


def tiny_bert(num_labels: int = 3, seed: int = 0, dropout: float | None = None, layers: int = 2) -> nn.Module:
    """``BertForSequenceClassification`` (modules: ``bert.encoder.layer.{0,1}.attention.self.query`` …);
    ``layers`` for tests that need a deeper stack."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels, **_COMMON,
                        **_dropout(dropout, "hidden_dropout_prob", "attention_probs_dropout_prob"))
    return _build(BertForSequenceClassification, config, seed)


def tiny_gpt2(seed: int = 0, dropout: float | None = None) -> nn.Module:
    """``GPT2LMHeadModel`` (GPT-2's causal-LM class; modules ``transformer.h.{0,1}.attn.c_attn`` are Conv1D)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=1, eos_token_id=1, pad_token_id=0, **_COMMON,
                        **_dropout(dropout, "resid_pdrop", "embd_pdrop", "attn_pdrop"))
    return _build(GPT2LMHeadModel, config, seed)


def tiny_llama(seed: int = 0, dropout: float | None = None) -> nn.Module:
    """``LlamaForCausalLM`` shaped like SmolLM2 in miniature (grouped-query attention: 4 heads, 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True, **_COMMON,
                         **_dropout(dropout, "attention_dropout"))
    return _build(LlamaForCausalLM, config, seed)


def tiny_t5(seed: int = 0, dropout: float | None = None) -> nn.Module:
    """``T5ForConditionalGeneration`` (encoder-decoder; modules ``encoder.block.0.layer.0.SelfAttention.q`` …)."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=VOCAB_SIZE, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1, **_COMMON, **_dropout(dropout, "dropout_rate"))
    return _build(T5ForConditionalGeneration, config, seed)


def tiny_vit(num_labels: int = 3, seed: int = 0, dropout: float | None = None, layers: int = 2) -> nn.Module:
    """``ViTForImageClassification`` on 16x16 RGB images in 4x4 patches; ``layers`` as tiny_bert's."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=layers,
                       num_attention_heads=2, intermediate_size=64, num_labels=num_labels, **_COMMON,
                       **_dropout(dropout, "hidden_dropout_prob", "attention_probs_dropout_prob"))
    return _build(ViTForImageClassification, config, seed)


TINY_MODELS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama, "t5": tiny_t5, "vit": tiny_vit}

# Tiny configs of common architectures by model_type (hidden 16, 2 layers, 2 heads, FFN 32), for the
# architecture matrix: fused q/k/v (GPT-NeoX, BLOOM, Falcon, MPT, Phi-3), grouped-query attention,
# encoder-decoders, and classification heads with Linear layers inside (RoBERTa, DistilBERT, BART).
_ENCODER = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
_DECODER = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8)
_GPT = dict(n_embd=16, n_layer=2, n_head=2)
ARCHITECTURES: dict[str, dict] = {
    "bert": _ENCODER, "roberta": _ENCODER, "xlm-roberta": _ENCODER, "electra": {**_ENCODER, "embedding_size": 16},
    "albert": {**_ENCODER, "embedding_size": 16},
    "distilbert": dict(dim=16, n_layers=2, n_heads=2, hidden_dim=32),
    "deberta-v2": {**_ENCODER, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 8,
                   "max_relative_positions": 16, "share_att_key": True},
    "gpt2": _GPT, "gpt_bigcode": _GPT,
    "gptj": {**_GPT, "rotary_dim": 4, "n_inner": 32}, "codegen": {**_GPT, "rotary_dim": 4, "n_inner": 32},
    "gpt_neo": dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, window_size=8,
                    attention_types=[[["global", "local"], 1]]),
    "gpt_neox": {k: v for k, v in _DECODER.items() if k not in ("num_key_value_heads", "head_dim")},
    "opt": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16),
    "bloom": dict(hidden_size=16, n_layer=2, n_head=2),
    "falcon": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_hidden_size=32),
    "mpt": dict(d_model=16, n_heads=2, n_layers=2, expansion_ratio=2, max_seq_len=64),
    "llama": _DECODER, "mistral": _DECODER, "qwen2": _DECODER, "qwen3": _DECODER, "gemma": _DECODER,
    "gemma2": _DECODER, "stablelm": _DECODER, "starcoder2": _DECODER, "olmo2": _DECODER,
    "mixtral": {**_DECODER, "num_local_experts": 2, "num_experts_per_tok": 1},
    "phi": {k: v for k, v in _DECODER.items() if k != "head_dim"},
    "phi3": {k: v for k, v in _DECODER.items() if k != "head_dim"},
    "t5": dict(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
               relative_attention_num_buckets=8, decoder_start_token_id=0),
    "bart": dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=32, decoder_ffn_dim=32),
    "vit": dict(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=32),
}
ENCODER_ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert", "deberta-v2")
SEQ2SEQ_ARCHITECTURES = ("t5", "bart")
DECODER_ARCHITECTURES = tuple(a for a in ARCHITECTURES if a not in ENCODER_ARCHITECTURES + SEQ2SEQ_ARCHITECTURES + ("vit",))
# (architecture, task): every architecture once, with the task it is most used for
ARCHITECTURE_TASKS = ([(a, "classification") for a in ENCODER_ARCHITECTURES] + [("vit", "image-classification")]
                      + [(a, "causal-lm") for a in DECODER_ARCHITECTURES] + [("t5", "seq2seq"), ("bart", "classification")])
TASK_CLASSES = {"classification": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM",
                "seq2seq": "AutoModelForSeq2SeqLM", "image-classification": "AutoModelForImageClassification"}


def tiny_model(model_type: str, task: str = "causal-lm", num_labels: int = 3, seed: int = 0) -> nn.Module:
    """A tiny random model of any architecture in ARCHITECTURES for a task in TASK_CLASSES (eager
    attention, eval mode, global RNG untouched, like the tiny_* builders)."""
    import transformers

    if model_type not in ARCHITECTURES:
        raise KeyError(f"no tiny config for {model_type!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    sizes = ARCHITECTURES[model_type]
    tokens = {} if model_type == "vit" else dict(vocab_size=VOCAB_SIZE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    positions = {} if model_type == "vit" else {"max_position_embeddings": 64, "n_positions": 64}
    config = transformers.AutoConfig.for_model(model_type, num_labels=num_labels, **_COMMON, **positions, **tokens, **sizes)
    return _build(getattr(transformers, TASK_CLASSES[task]).from_config, config, seed)


def find_hf_model(model: nn.Module) -> nn.Module:
    """The first (outermost) submodule that carries a Hugging Face config — the model itself, or the
    base model inside a wrapper such as an adapter container."""
    from transformers import PreTrainedConfig

    for module in model.modules():
        # its own config, not one an AdaptedModel forwards from the model it wraps
        if isinstance(vars(module).get("config"), PreTrainedConfig):
            return module
    raise TypeError(f"{type(model).__name__} contains no Hugging Face model (no module with a .config)")


def tiny_batch(model: nn.Module, batch_size: int = 4, seq_len: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A valid input dict, labels included, for the kind of model given (or wrapped).

    Text batches pad the last row's final quarter (attention_mask 0, LM labels -100) so padding code
    paths run too. Seq2seq labels are ``seq_len // 2`` tokens long.
    """
    hf = find_hf_model(model)
    config, kind = hf.config, type(hf).__name__
    g = torch.Generator().manual_seed(seed)

    if kind.endswith("ForImageClassification"):
        size, channels = config.image_size, config.num_channels
        return {"pixel_values": torch.randn(batch_size, channels, size, size, generator=g),
                "labels": torch.randint(0, config.num_labels, (batch_size,), generator=g)}

    # Ids start above the few special ids (pad 0, bos/eos 1-2, ...) so no token is accidentally padding.
    input_ids = torch.randint(5, config.vocab_size, (batch_size, seq_len), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, seq_len - max(1, seq_len // 4):] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id or 0)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}

    if kind.endswith("ForSequenceClassification"):
        batch["labels"] = torch.randint(0, config.num_labels, (batch_size,), generator=g)
        if getattr(config, "is_encoder_decoder", False):  # BART/T5 classify the last token, an EOS (one per row)
            last = attention_mask.sum(dim=1) - 1
            batch["input_ids"][torch.arange(batch_size), last] = config.eos_token_id
    elif kind.endswith("ForCausalLM") or kind.endswith("LMHeadModel"):
        batch["labels"] = input_ids.masked_fill(attention_mask == 0, -100)
    elif getattr(config, "is_encoder_decoder", False):
        batch["labels"] = torch.randint(5, config.vocab_size, (batch_size, max(1, seq_len // 2)), generator=g)
    else:
        raise TypeError(f"tiny_batch does not know how to build labels for {kind}")
    return batch


def tiny_tokenizer():
    """A character-level, lower-casing BERT-style tokenizer (54 ids, all < ``VOCAB_SIZE``), built in memory.

    ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, ``[SEP]`` = 3 (also EOS), ``[MASK]`` = 4; pairs get
    ``token_type_ids``. Good enough to run real text through the tiny models without any files.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789 \n.,;:!?'\"-()")
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", eos_token="[SEP]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def saved_for_backward_bytes(model: nn.Module, batch: dict) -> int:
    """Bytes autograd keeps for backward in one training step on batch (then runs the backward): the
    activation memory a method costs, counted exactly instead of read from a noisy process peak."""
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    return sum(sizes)


def tiny_lora_family(n: int, prefix: str = "a", scale: float = 0.3, family: str = "bert", seed: int = 0):
    """A tiny model with n LoRA adapters (r=2 on query and value) named prefix0 … prefix{n-1}, every
    adapter (and head) parameter moved by N(0, scale²) so that they differ; with a batch for it."""
    base = TINY_MODELS[family](seed=0)
    am = adapt(base, LoraConfig(r=2, targets=["query", "value"]), f"{prefix}0")
    for i in range(1, n):
        am.add(LoraConfig(r=2, targets=["query", "value"]), f"{prefix}{i}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(n):
            for _, _, delta in am.layers(f"{prefix}{i}"):
                for p in delta.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * scale)
    return am, tiny_batch(base, seed=1)


CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_chat_tokenizer(chat_template: bool = True):
    """A character-level, lower-casing decoder tokenizer with a ChatML template (ids < ``VOCAB_SIZE``).

    ``<pad>`` = 0, ``<|im_start|>`` = 1 (also BOS, not added to texts), ``<|im_end|>`` = 2 (also EOS, as in
    SmolLM2), then one id per character: token ids match ``tiny_llama``'s BOS/EOS/pad ids.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789 \n.,;:!?'\"-(){}/_#*[]<>|=+&%")
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", unk_token="<unk>")
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
