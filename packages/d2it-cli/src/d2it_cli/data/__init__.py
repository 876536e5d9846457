"""Datasets."""

DATASETS = []
