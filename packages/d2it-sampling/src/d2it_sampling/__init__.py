"""d2it_sampling."""
