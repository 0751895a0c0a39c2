"""Data sets in MVTec AD layout: reading them, generating the toy and ELPV ones, support sets."""

from fsad.data.elpv import build_elpv_dataset
from fsad.data.mvtec import Category, Sample, list_categories, load_category, read_image, read_mask
from fsad.data.support_sets import load_support_sets, make_support_sets, save_support_sets, support_samples, support_sets_for
from fsad.data.toy import make_toy_dataset

__all__ = [
    "Category",
    "Sample",
    "build_elpv_dataset",
    "list_categories",
    "load_category",
    "load_support_sets",
    "make_support_sets",
    "make_toy_dataset",
    "read_image",
    "read_mask",
    "save_support_sets",
    "support_samples",
    "support_sets_for",
]
