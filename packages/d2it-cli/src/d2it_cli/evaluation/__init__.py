"""Evaluation metrics as registered components (kind "metric"), thin layers over torch-fidelity and lpips.

A metric factory is called as `factory(config, **context)`. Feature metrics (`fid`, `isc`, `kid`, `prc`,
`rfid`) are `FeatureMetric`s: `layer_for(extractor_cls)` names the torch-fidelity feature layer they read
and `metric(gen, ref, layer, seed)` maps two `FeatureSet`s to a dict of values. `lpips` is pairwise:
`metric(a, b)` gives per-image distances of two image batches in [-1, 1] (context: `device`).
"""

from d2it_cli.evaluation.metrics import FeatureMetric, FeatureSet, psnr

__all__ = ["FeatureMetric", "FeatureSet", "psnr"]
