"""Hugging Face PEFT's on-disk format for prompt learning: PROMPT_TUNING and PREFIX_TUNING.

PEFT's prompt-learning files differ from its tuner files: the prompt is one tensor
`prompt_embeddings` (num_virtual_tokens × token_dim, times num_transformer_submodules), and a
trained task head is keyed `base_model.<head>.<tensor>` (the model is not wrapped by a tuner, so
there is no `base_model.model.` prefix). petkit puts prompts on the encoder only, so it writes and
reads num_transformer_submodules = 1 (PEFT's default for encoder–decoder models is 2, a prompt for
the decoder too: such files are refused with that reason).

Prefixes: `prompt_embeddings` is the folded table m × (layers·2·token_dim), token_dim = kv heads ×
head dim, the layout petkit keeps (an MLP-trained prefix is folded on export, as PEFT does on
saving; P-tuning v2 deep prompts are written the same way and read back as `prefix`). PEFT feeds
prefixes as a KV cache, which BERT-style encoders do not take and which T5 gets
on its decoder only, so prefix files are written and read for decoder-only causal LMs.

A method whose adapters PEFT holds this way puts a `PromptFormat` in its registry record with what
its type differs in (the table and the type's fields; the adapter a file adds); this module does
the rest (heads, task type, checks) and imports no method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from petkit.core.errors import AdapterFileError
from petkit.core.head import HeadDelta
from petkit.core.load_checks import check_base, check_tensors, copy_tensors
from petkit.core.storage import WEIGHTS_NAME, read_tensors
from petkit.interop.peft_common import check_heads, fingerprint, head_of, module_names, peft_task_type, short

HEAD_PREFIX = "base_model."
PROMPT_KEY = "prompt_embeddings"


@dataclass(frozen=True)
class PromptFormat:
    """How one method's adapters look in PEFT's prompt-learning files.

    table(am, name) -> (table, fields): the `prompt_embeddings` tensor and the type's own
        adapter_config.json fields; raises ConfigError where PEFT's format cannot hold the adapter.
    add(am, name, num_virtual_tokens, train_head, peft_config, folder) -> key: adds the adapter a
        file holds (without its init) and returns the key of its adapter_parameters the table fills.
    twin: (PEFT config class, the exported fields it takes), for `petkit bench --against peft`.
    """

    peft_type: str
    table: Callable
    add: Callable | None = None
    twin: tuple[str, tuple[str, ...]] | None = None
    reads: bool = True  # False: files of this type are read back by another method's format

    def export(self, am, name: str) -> tuple[dict, dict]:
        table, fields = self.table(am, name)
        tensors = {PROMPT_KEY: table}
        heads = []
        for path, _, d in am.layers(name):
            if isinstance(d, HeadDelta):
                heads.append(path)
                tensors.update({f"{HEAD_PREFIX}{path}.{k}": v for k, v in d.module.state_dict().items()})
        common = {
            "task_type": peft_task_type(am, heads), "num_virtual_tokens": table.shape[0], "num_transformer_submodules": 1,
            "modules_to_save": heads or None, "base_model_name_or_path": None, "inference_mode": True, "revision": None,
        }
        return {**common, "peft_type": self.peft_type, **fields}, tensors

    def load(self, am, folder: Path, config: dict, name: str, force: bool) -> None:
        file = folder / WEIGHTS_NAME
        tensors, metadata = read_tensors(file)
        subs, m = config.get("num_transformer_submodules", 1), config.get("num_virtual_tokens")
        if subs not in (1, None):
            raise AdapterFileError(f"{file}: num_transformer_submodules={short(subs)} (a prompt for the decoder too); "
                                   "petkit prompts the encoder only and reads files with 1")
        if not isinstance(m, int) or isinstance(m, bool) or m <= 0:
            raise AdapterFileError(f"{folder}: num_virtual_tokens must be a positive integer, got {short(m)}")
        prompt = tensors.pop(PROMPT_KEY, None)
        if prompt is None:
            raise AdapterFileError(f"{file} holds no {PROMPT_KEY!r} tensor")
        names = module_names(config.get("modules_to_save"))
        heads: dict[str, dict] = {}
        for key, value in tensors.items():
            head = head_of(key[len(HEAD_PREFIX):], names) if key.startswith(HEAD_PREFIX) else None
            if head is None:
                raise AdapterFileError(f"{file}: tensor {short(key)} is neither the prompt nor a task head's")
            heads.setdefault(head, {})[key[len(HEAD_PREFIX) + len(head) + 1:]] = value
        train_head = check_heads(am, heads, names, file)
        saved = {self.add(am, name, m, train_head, config, folder): prompt}
        saved.update({f"{h}.module.{k}": v for h, leaves in heads.items() for k, v in leaves.items()})
        expected = am.adapter_parameters(name)
        check_tensors(expected, saved, str(folder))
        check_base(am, fingerprint(metadata, file), force, folder)
        copy_tensors(expected, saved)


def hf_int(config, *names):
    """The first of `names` that a transformers config holds as an int (models name sizes differently)."""
    return next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), None)
