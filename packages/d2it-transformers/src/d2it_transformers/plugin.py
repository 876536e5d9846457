"""d2it-transformers' built-in components: backbones, refiners and grain predictors."""

from d2it.hookspecs import hookimpl
from d2it.spec import ComponentSpec

# Factories and configs are "module:attr" references, imported when a component is built: loading
# this plugin and listing its components (`d2it plugins`) import no model code. Summaries are written
# out for the same reason; tests check the backbone ones against the configs' defaults.

DIT = "d2it_transformers.dit"
CONTENT = "d2it_transformers.content"
GRAIN = "d2it_transformers.grain"


def _backbone(name: str, config: str, summary: str, aliases=()) -> ComponentSpec:
    return ComponentSpec(name, "backbone", f"{DIT}:make_backbone", f"{DIT}:{config}", summary=summary, aliases=aliases)


BACKBONES = [
    _backbone("dit-s", "DiTS2Config", "DiT-S/2: width 384, 6 heads, depth 12 (D²iT: 10 + 2 RefineNet)", ("dit-s/2",)),
    _backbone("dit-b", "DiTB2Config", "DiT-B/2: width 768, 12 heads, depth 12 (D²iT: 10 + 2 RefineNet)", ("dit-b/2",)),
    _backbone("dit-l", "DiTL2Config", "DiT-L/2: width 1024, 16 heads, depth 24 (D²iT: 20 + 4 RefineNet)", ("dit-l/2",)),
    _backbone(
        "dit-xl", "DiTXL2Config", "DiT-XL/2: width 1152, 16 heads, depth 28 (D²iT: 22 + 6 RefineNet)", ("dit-xl/2",)
    ),
    _backbone("dit-s/1", "DiTS1Config", "DiT-S/1: width 384, 6 heads, depth 12 (D²iT: 10 + 2 RefineNet)"),
    _backbone("dit-b/1", "DiTB1Config", "DiT-B/1: width 768, 12 heads, depth 12 (D²iT: 10 + 2 RefineNet)"),
    _backbone("dit-l/1", "DiTL1Config", "DiT-L/1: width 1024, 16 heads, depth 24 (D²iT: 20 + 4 RefineNet)"),
    _backbone("dit-xl/1", "DiTXL1Config", "DiT-XL/1: width 1152, 16 heads, depth 28 (D²iT: 22 + 6 RefineNet)"),
]


def _refiner(name: str, attention: str, sparse: bool) -> ComponentSpec:
    factory = f"make_{name.replace('-', '_')}"
    packed = " on the fine cells only (packed, same weights)" if sparse else ""
    return ComponentSpec(
        name,
        "refiner",
        f"{CONTENT}:{factory}",
        f"{CONTENT}:RefinerConfig",
        summary=f"RefineNet with {attention}{packed}",
    )


_ATTENTION = {**{f"window{m}": f"{m}x{m}-cell window attention" for m in (16, 8, 4, 2)}, "global": "global attention"}
REFINERS = [
    *(_refiner(name, what, sparse=False) for name, what in _ATTENTION.items()),
    *(_refiner(f"{name}-sparse", what, sparse=True) for name, what in _ATTENTION.items()),
    ComponentSpec(
        "none", "refiner", f"{CONTENT}:make_no_refiner", summary="no RefineNet: the backbone's rough prediction"
    ),
]

GRAIN_PREDICTORS = [
    ComponentSpec(
        "dgt-s",
        "grain_predictor",
        f"{GRAIN}:make_grain_transformer",
        f"{GRAIN}:GrainTransformerConfig",
        summary="Dynamic Grain Transformer S (12 layers, 384 wide, 6 heads; MaskGIT over grain maps)",
    ),
    ComponentSpec(
        "dgt-b",
        "grain_predictor",
        f"{GRAIN}:make_grain_transformer",
        f"{GRAIN}:GrainTransformerBConfig",
        summary="Dynamic Grain Transformer B (12 layers, 768 wide, 12 heads; MaskGIT over grain maps)",
    ),
    ComponentSpec(
        "random",
        "grain_predictor",
        f"{GRAIN}:make_random",
        f"{GRAIN}:RandomConfig",
        summary="each region the finest grain with probability ratio, else the coarsest (the paper's Random)",
    ),
    ComponentSpec(
        "all-fine",
        "grain_predictor",
        f"{GRAIN}:make_all_fine",
        f"{GRAIN}:FixedConfig",
        summary="every region the finest grain",
    ),
    ComponentSpec(
        "all-coarse",
        "grain_predictor",
        f"{GRAIN}:make_all_coarse",
        f"{GRAIN}:FixedConfig",
        summary="every region coarsest",
    ),
]


@hookimpl
def d2it_backbones():
    """DiT backbones (patch 2 and patch 1)."""
    return list(BACKBONES)


@hookimpl
def d2it_refiners():
    """RefineNet variants, each building the Dynamic Content Transformer."""
    return list(REFINERS)


@hookimpl
def d2it_grain_predictors():
    """The Dynamic Grain Transformer and the fixed/random grain predictors."""
    return list(GRAIN_PREDICTORS)
