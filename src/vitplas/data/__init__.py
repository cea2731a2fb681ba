"""Datasets: one registry, one wrapper, the paper's splits, transforms from the model's config.

get_dataset("cifar10", "val", transform=build_transform(mean, std, 224, train=False))
dataset_info("cifar10-c/snow/5").num_classes  # 10
list_datasets()                               # every family, parametrised ones included
get_dataset("rotten-tomatoes", "test")[0]     # (text, label): a text set (modality 'text')
tokenize_texts(texts, tokenizer, 128)         # {input_ids, attention_mask}: (N, 128) int64
TokenizedTexts(texts, tokenizer, 128)[0]      # (tokens (2, 128) int64, label): pack_tokens
"""

from vitplas.data.build import get_dataset, make_loader, skipped_report
from vitplas.data.photos import PhotoStream
from vitplas.data.records import ArrayImages, FileImages, ImageDataset
from vitplas.data.registry import (
    DataError,
    DatasetInfo,
    Param,
    dataset_info,
    is_available,
    list_datasets,
    parse_name,
    resolve_root,
)
from vitplas.data.splits import SPLIT_SEED, split_indices, stratified_split
from vitplas.data.text import TextDataset, TextRecords, TokenizedTexts, pack_tokens, tokenize_texts
from vitplas.data.transforms import build_transform, eval_resize, transform_for

__all__ = [
    "SPLIT_SEED",
    "ArrayImages",
    "DataError",
    "DatasetInfo",
    "FileImages",
    "ImageDataset",
    "Param",
    "PhotoStream",
    "TextDataset",
    "TextRecords",
    "TokenizedTexts",
    "build_transform",
    "dataset_info",
    "eval_resize",
    "get_dataset",
    "is_available",
    "list_datasets",
    "make_loader",
    "pack_tokens",
    "parse_name",
    "resolve_root",
    "skipped_report",
    "split_indices",
    "stratified_split",
    "tokenize_texts",
    "transform_for",
]
