"""Evaluation metrics as registered components (kind "metric"), thin layers over torch-fidelity and lpips.

A metric factory is called as `factory(config, **context)`. Feature metrics (`fid`, `isc`, `kid`, `prc`,
`rfid`) are `FeatureMetric`s: `layer_for(extractor_cls)` names the torch-fidelity feature layer they read
and `metric(gen, ref, layer, seed)` maps two `FeatureSet`s to a dict of values. `lpips` is pairwise:
`metric(a, b)` gives per-image distances of two image batches in [-1, 1] (context: `device`). Pixel
metrics (`swd`) are `PixelMetric`s: `accumulator(seed)` collects each set batch by batch from uint8
images, and `metric(gen_acc, ref_acc)` gives the values; they need no feature extractor or weights.
"""

from d2it_cli.evaluation.metrics import FeatureMetric, FeatureSet, PixelMetric, psnr, ssim

__all__ = ["FeatureMetric", "FeatureSet", "PixelMetric", "psnr", "ssim"]
