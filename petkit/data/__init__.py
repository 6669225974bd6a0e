"""Datasets, tokenisation and batches.

    data = load_dataset("sst2", max_train=2000)
    train = ClassificationDataset(tokenizer, data.train, max_length=64)   # or classification_batches(...)
    blocks = lm_blocks(tokenizer, load_dataset("tiny_shakespeare").train, block_length=128)
"""

from .batches import (
    IGNORE_INDEX,
    ClassificationDataset,
    LMBlockDataset,
    classification_batches,
    lm_batches,
    lm_blocks,
    pad_batch,
    pad_token_id,
)
from .files import load_file
from .load import known_datasets, load_dataset, subsample
from .locate import ENV_VAR, data_dir_candidates
from .splits import permutation, stratified_sample, stratified_split
from .task import DatasetNotFound, TaskData

__all__ = [
    "ENV_VAR", "IGNORE_INDEX", "ClassificationDataset", "DatasetNotFound", "LMBlockDataset", "TaskData",
    "classification_batches", "data_dir_candidates", "known_datasets", "lm_batches", "lm_blocks",
    "load_dataset", "load_file", "pad_batch", "pad_token_id", "permutation", "stratified_sample",
    "stratified_split", "subsample",
]
