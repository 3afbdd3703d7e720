"""Data sources, validation, the deterministic split and the prepared on-disk format."""

from .datasets import (IMAGE_SUFFIXES, SPLITS, Prepared, RawDataset, Split, download_tf_flowers, load_digits_source,
                       load_folder_source, load_mnist5k_source, load_prepared, load_source, save_prepared, size_advice,
                       stratified_split, summarize)

__all__ = ["IMAGE_SUFFIXES", "SPLITS", "Prepared", "RawDataset", "Split", "download_tf_flowers", "load_digits_source",
           "load_folder_source", "load_mnist5k_source", "load_prepared", "load_source", "save_prepared", "size_advice",
           "stratified_split", "summarize"]
