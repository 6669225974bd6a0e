"""Training models from other models: GPT4Image-style alignment with a frozen text encoder; Compressor
(a student shape searched under a size budget, distilled on unlabelled data with soft labels)."""

from .align import LOSSES, Projector, text_alignment_loss
from .align_train import AlignConfig, AlignedClassifier, AlignedExamples, AlignedOutput, embed_texts
from .cost import TransformerShape
from .search import SearchResult, random_shapes, search_shape, search_space
from .soft_labels import SoftLabelDataset, SoftLabelStudent, distill_soft_labels, soft_label_loss, teacher_logits
from .student import build_student, load_student, save_student, train_tokenizer

__all__ = ["LOSSES", "Projector", "text_alignment_loss", "AlignConfig", "AlignedClassifier", "AlignedExamples",
           "AlignedOutput", "embed_texts", "TransformerShape", "SearchResult", "random_shapes", "search_shape",
           "search_space", "SoftLabelDataset", "SoftLabelStudent", "distill_soft_labels", "soft_label_loss",
           "teacher_logits", "build_student", "load_student", "save_student", "train_tokenizer"]
