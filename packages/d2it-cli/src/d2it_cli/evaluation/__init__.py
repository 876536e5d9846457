"""Evaluation metrics as registered components (kind "metric"), thin layers over torch-fidelity and lpips.

A metric factory is called as `factory(config, **context)`. Feature metrics (`fid`, `isc`, `kid`, `prc`,
`rfid`) are `FeatureMetric`s: `layer_for(extractor_cls)` names the torch-fidelity feature layer they read
and `metric(gen, ref, layer, seed)` maps two `FeatureSet`s to a dict of values. `lpips` is pairwise:
`metric(a, b)` gives per-image distances of two image batches in [-1, 1] (context: `device`).
"""

from d2it.spec import ComponentSpec
from d2it_cli.evaluation.metrics import (
    FID,
    ISC,
    KID,
    LPIPS,
    PRC,
    RFID,
    FeatureMetric,
    FeatureSet,
    FidConfig,
    IscConfig,
    KidConfig,
    LpipsConfig,
    PrcConfig,
    psnr,
)

METRICS = [
    ComponentSpec(name="fid", kind="metric", factory=FID, config=FidConfig,
                  summary="Fréchet Inception distance (torch-fidelity)"),
    ComponentSpec(name="isc", kind="metric", factory=ISC, config=IscConfig,
                  summary="Inception score (torch-fidelity)"),
    ComponentSpec(name="kid", kind="metric", factory=KID, config=KidConfig,
                  summary="kernel Inception distance (torch-fidelity)"),
    ComponentSpec(name="prc", kind="metric", factory=PRC, config=PrcConfig,
                  summary="improved precision and recall, k = 3 on pool features (torch-fidelity)"),
    ComponentSpec(name="lpips", kind="metric", factory=LPIPS, config=LpipsConfig,
                  summary="learned perceptual image patch similarity (lpips package)"),
    ComponentSpec(name="rfid", kind="metric", factory=RFID, config=FidConfig,
                  summary="FID between VAE reconstructions and their inputs (torch-fidelity)"),
]

__all__ = ["METRICS", "FeatureMetric", "FeatureSet", "psnr"]
