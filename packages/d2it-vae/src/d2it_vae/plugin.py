"""d2it-vae's built-in components (filled in by the stage-1 implementation)."""
