"""Model editing: MEND (Mitchell et al., ICLR 2022), a learned editor that turns the rank-1 factors
of a fine-tuning gradient into a fast, local weight edit, with the fine-tuning baseline beside it."""

from .apply import AppliedEdit, capture, edit_model, edited, edited_logits, gradient_deltas, mend_deltas
from .data import Edit, read_edits, synthetic_edits, target_ids, write_edits
from .editor import MendConfig, MendEditor, build_editor
from .hooks import GradientFactors, rank_one_sum
from .metrics import evaluate_edits, score_edit
from .storage import load_editor, save_editor
from .targets import default_targets, linear_modules, weight_shapes
from .train import MendTrainConfig, meta_loss, train_editor


__all__ = ["AppliedEdit", "capture", "edit_model", "edited", "edited_logits", "gradient_deltas", "mend_deltas",
           "Edit", "read_edits", "synthetic_edits", "target_ids", "write_edits", "MendConfig", "MendEditor",
           "GradientFactors", "rank_one_sum", "evaluate_edits", "score_edit", "load_editor", "save_editor",
           "default_targets", "linear_modules", "weight_shapes", "MendTrainConfig", "meta_loss", "train_editor",
           "build_editor"]
