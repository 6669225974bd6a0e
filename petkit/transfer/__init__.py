"""Moving a pre-trained model to a new vocabulary: CLP-Transfer."""

from .clp import ClpReport, clp_rows, clp_transfer

__all__ = ["ClpReport", "clp_rows", "clp_transfer"]
