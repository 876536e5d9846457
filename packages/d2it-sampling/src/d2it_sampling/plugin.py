"""d2it-sampling's built-in components (filled in by the diffusion implementation)."""
