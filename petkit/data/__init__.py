"""Datasets, tokenisation and batches.

    data = load_dataset("sst2", max_train=2000)
    train = ClassificationDataset(tokenizer, data.train, max_length=64)   # or classification_batches(...)
    blocks = lm_blocks(tokenizer, load_dataset("tiny_shakespeare").train, block_length=128)
    sft = sft_dataset(tokenizer, load_dataset("trec-instruct").train, max_length=256, packing=True)
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
from .files import load_file, read_rows
from .hf_datasets import from_hf
from .load import known_datasets, load_dataset, subsample
from .locate import ENV_VAR, data_dir_candidates
from .packing import PackedSFTDataset, pack_rows
from .regression import JointRegressionDataset, RegressionDataset, check_targets, target_stats
from .sft import TRUNCATION, SFTDataset, SFTStats, prompt_ids, reference_answer, sft_dataset, tokenize_records
from .sft_formats import FORMATS, detect_format
from .splits import permutation, stratified_sample, stratified_split
from .task import DatasetNotFound, TaskData

__all__ = [
    "ENV_VAR", "FORMATS", "IGNORE_INDEX", "TRUNCATION", "ClassificationDataset", "DatasetNotFound",
    "JointRegressionDataset", "LMBlockDataset", "PackedSFTDataset", "RegressionDataset", "SFTDataset", "SFTStats",
    "TaskData", "check_targets", "classification_batches", "data_dir_candidates", "detect_format", "from_hf",
    "known_datasets", "lm_batches", "lm_blocks", "load_dataset", "load_file", "pack_rows", "pad_batch",
    "pad_token_id", "permutation", "prompt_ids", "read_rows", "reference_answer", "sft_dataset",
    "stratified_sample", "stratified_split", "subsample", "target_stats", "tokenize_records",
]
