"""d2it_vae."""
