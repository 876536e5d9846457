"""Evaluation metrics."""

METRICS = []
