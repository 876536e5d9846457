"""d2it_transformers."""
