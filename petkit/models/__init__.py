"""Pre-trained models by alias (``minilm``, ``smollm2``) or local folder, loaded offline.

    model = load_model("minilm", task="classification", num_labels=2)
    tokenizer = load_tokenizer("minilm")
"""

from .aliases import ALIASES, ModelNotFound
from .gguf_cache import cache_root, smollm2_checkpoint
from .loading import MODEL_TASKS, load_model, load_tokenizer, resolve

__all__ = ["ALIASES", "MODEL_TASKS", "ModelNotFound", "cache_root", "load_model", "load_tokenizer",
           "resolve", "smollm2_checkpoint"]
