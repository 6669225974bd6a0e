"""Moving a pre-trained model to a new vocabulary: CLP-Transfer, and vocabulary extension."""

from .clp import ClpReport, clp_rows, clp_transfer
from .extend import ExtendReport, extend_vocabulary, fertility, frequent_words, train_new_rows

__all__ = ["ClpReport", "ExtendReport", "clp_rows", "clp_transfer", "extend_vocabulary", "fertility", "frequent_words",
           "train_new_rows"]
