"""Training models from other models: G2SD (generic then specific distillation into a smaller BERT);
Compressor (a student shape searched under a size budget, distilled on unlabelled data with soft labels);
GPT4Image-style alignment with a frozen text encoder."""

from .align import LOSSES, Projector, text_alignment_loss
from .align_train import AlignConfig, AlignedClassifier, AlignedExamples, AlignedOutput, embed_texts
from .bert_student import bert_student, copy_projected_embeddings, parameter_count, safetensors_bytes, student_config
from .cost import TransformerShape
from .g2sd import (DistillationTokenClassifier, FeatureDistiller, GenericConfig, SpecificConfig, StageConfig,
                   TextDataset, generic_distill, generic_loss, shared_mask, specific_distill, teacher_predictions)
from .search import SearchResult, random_shapes, search_shape, search_space
from .soft_labels import SoftLabelDataset, SoftLabelStudent, distill_soft_labels, soft_label_loss, teacher_logits
from .student import build_student, load_student, save_student, train_tokenizer

__all__ = ["LOSSES", "Projector", "text_alignment_loss", "AlignConfig", "AlignedClassifier", "AlignedExamples",
           "AlignedOutput", "embed_texts", "bert_student", "copy_projected_embeddings", "parameter_count",
           "safetensors_bytes", "student_config", "TransformerShape", "DistillationTokenClassifier",
           "FeatureDistiller", "GenericConfig", "SpecificConfig", "StageConfig", "TextDataset", "generic_distill",
           "generic_loss", "shared_mask", "specific_distill", "teacher_predictions", "SearchResult", "random_shapes",
           "search_shape", "search_space", "SoftLabelDataset", "SoftLabelStudent", "distill_soft_labels",
           "soft_label_loss", "teacher_logits", "build_student", "load_student", "save_student", "train_tokenizer"]
