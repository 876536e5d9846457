"""The Dynamic Content Transformer: the routed DiT backbone plus RefineNet, predicting multi-grained noise.

Reading order: the content model -> configs -> factories (one per refiner, registered by reference in
`d2it_transformers.plugin`). The backbone (`d2it_transformers.dit.RoutedDiT`) turns one token per region
into a rough prediction for every cell and a coarse prediction per region; RefineNet
(`d2it_transformers.refine`, or its sparse form in `d2it_transformers.sparse`) corrects the rough
prediction with window attention on the cell grid; the output follows the copied (neighbour-copy) layout.
"""

import inspect

import attrs
import torch
from torch import nn

from d2it.errors import ConfigError
from d2it.layout import cell_grain, multigrain_noise, project_to_layout
from d2it_transformers.dit import module_device
from d2it_transformers.refine import RefineNet
from d2it_transformers.sparse import SparseRefineNet

# ---------------------------------------------------------------------------------------------
# The content model
# ---------------------------------------------------------------------------------------------


def example_grain_map(batch: int, grid: tuple[int, int], grains: int) -> torch.Tensor:
    """A deterministic mixed grain map: grain (i + j) mod k per region (a checkerboard, half fine, for k = 2)."""
    i = torch.arange(grid[0])[:, None]
    j = torch.arange(grid[1])[None, :]
    return ((i + j) % grains).expand(batch, *grid).contiguous()


def take_coarse(pred: torch.Tensor, coarse: torch.Tensor, grain_map: torch.Tensor) -> torch.Tensor:
    """`pred` (B, C, H, W) with each coarsest region's cells set to its coarse-head vector (coarse: (B, C, h, w)).

    Broadcast over region-shaped views: neither the coarse vectors nor the grain map are upsampled to the
    cell grid first (four fewer copies per forward than `torch.where` on upsampled tensors).
    """
    b, c, hh, ww = pred.shape
    h, w = grain_map.shape[1:]
    cells = pred.view(b, c, h, hh // h, w, ww // w)
    coarsest = (grain_map == 0)[:, None, :, None, :, None]
    return torch.where(coarsest, coarse[:, :, :, None, :, None], cells).reshape(b, c, hh, ww)


class DynamicContentTransformer(nn.Module):
    """D²iT's noise predictor: routed DiT backbone + optional RefineNet, output in the copied layout.

    Coarsest regions take the coarse head's vector in all their cells; finer cells take the rough
    prediction plus RefineNet's correction (intermediate grains of k > 2 average it over each code).
    """

    def __init__(self, backbone: nn.Module, refiner: RefineNet | None = None, name: str = ""):
        super().__init__()
        self.backbone = backbone
        self.refiner = refiner
        self.name = name
        self.in_channels = backbone.in_channels
        self.out_channels = backbone.out_channels
        self.learn_sigma = backbone.learn_sigma
        self.input_size = backbone.input_size
        self.num_classes = backbone.num_classes
        self.null_class = getattr(backbone, "null_class", backbone.num_classes)
        self.grains = backbone.grains

    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute block activations in the backward pass to save memory."""
        for part in (self.backbone, self.refiner):
            if hasattr(part, "set_grad_checkpointing"):
                part.set_grad_checkpointing(enable)

    @property
    def label_dropout(self) -> float | None:
        """The backbone's label-dropout probability (None when it does not say or cannot be told which to drop)."""
        if "force_drop_ids" not in inspect.signature(self.backbone.forward).parameters:
            return None
        return getattr(self.backbone, "label_dropout", None)

    def forward(self, x, t, y, grain_map=None, force_drop_ids=None):
        """Multi-grained noise (and variance) prediction (B, out_channels, H, W) in the copied layout.

        `force_drop_ids` (B,): the labels to drop to the null class, instead of the backbone's own draw.
        """
        layout = None
        if getattr(self.refiner, "sparse", False):
            self.backbone.check_grain_map(x, grain_map)
            layout = self.refiner.layout(grain_map)  # its one host sync, before the backbone's kernels are queued
        drop = {} if force_drop_ids is None else {"force_drop_ids": force_drop_ids}
        routed = self.backbone(x, t, y, grain_map, **drop)
        pred = routed.rough
        if layout is not None:
            pred = pred + self.refiner(x, routed.tokens, routed.c, grain_map, layout=layout)
        elif self.refiner is not None:
            pred = pred + self.refiner(x, routed.tokens, routed.c)
        pred = take_coarse(pred, routed.coarse, grain_map)
        if self.grains > 2:
            pred = project_to_layout(pred, grain_map, self.grains)
        return pred

    def example_inputs(self, batch: int) -> tuple:
        """(x, t, y, grain_map): a copied-layout latent on a deterministic mixed grain map."""
        device = module_device(self)
        g = torch.Generator().manual_seed(0)
        grid = self.backbone.grid
        grain_map = example_grain_map(batch, grid, self.grains)
        x = multigrain_noise(grain_map, self.grains, self.in_channels, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        y = torch.arange(batch) % self.num_classes
        return x.to(device), t.to(device), y.to(device), grain_map.to(device)

    @property
    def count_note(self) -> str:
        """How the RefineNet tokens enter the MAC count."""
        if self.refiner is None:
            return "no RefineNet: fine cells take the backbone's rough prediction"
        size = self.input_size
        m, n, depth = self.refiner.window, self.refiner.windows, len(self.refiner.blocks)
        shape = "one window over the whole grid" if m is None else f"{n} window{'s' * (n != 1)} of {m}x{m} cells"
        if getattr(self.refiner, "sparse", False):
            gm = example_grain_map(1, self.backbone.grid, self.grains)
            fine = int((cell_grain(gm, self.grains) > 0).sum())
            return (
                f"sparse RefineNet ({depth} block{'s' * (depth != 1)}) counted on the fine cells only: {fine} of the "
                f"{size * size} cells of the {size}x{size} latent for the example grain map ({shape}); its MACs "
                "scale with the fine ratio"
            )
        return (
            f"RefineNet ({depth} block{'s' * (depth != 1)}) counted on all {size * size} cells of the {size}x{size} "
            f"latent ({shape}), coarse cells included, so its MACs do not depend on the grain map"
        )


# ---------------------------------------------------------------------------------------------
# Configs and factories
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class RefinerConfig:
    """Options of a RefineNet: depth None = the backbone's refine_depth (B 2, L 4, XL 6)."""

    depth: int | None = None


def _routed(backbone, name: str):
    if getattr(backbone, "grains", None) is None or not hasattr(backbone, "refine_depth"):
        raise ConfigError(
            f"refiner {name!r} needs a routed (grain-aware) backbone, got a plain {type(backbone).__name__}"
        )
    return backbone


def make_refiner(name: str, window: int | None, sparse: bool = False):
    """The factory of one RefineNet variant: wraps the routed backbone into the content model."""

    def factory(config, *, backbone, attention):
        _routed(backbone, name)
        depth = backbone.refine_depth if config.depth is None else config.depth
        if depth < 0:
            raise ConfigError(f"refine.depth must be at least 0, got {depth}")
        cls, extra = (SparseRefineNet, {"grains": backbone.grains}) if sparse else (RefineNet, {})
        refiner = cls(
            input_size=backbone.input_size,
            in_channels=backbone.in_channels,
            out_channels=backbone.out_channels,
            region=backbone.region,
            hidden_size=backbone.hidden_size,
            num_heads=backbone.num_heads,
            depth=depth,
            window=window,
            mlp_ratio=backbone.mlp_ratio,
            attention=attention,
            **extra,
        )
        return DynamicContentTransformer(backbone, refiner, name)

    factory.__doc__ = f"Build the Dynamic Content Transformer with RefineNet {name}."
    return factory


def make_no_refiner(config, *, backbone, attention):
    """Build the Dynamic Content Transformer without RefineNet (the paper's "DVAE & routing" ablation)."""
    return DynamicContentTransformer(_routed(backbone, "none"), None, "none")


# one module-level factory per registered refiner, so `d2it_transformers.plugin` can name it lazily
make_window16 = make_refiner("window16", 16)
make_window8 = make_refiner("window8", 8)
make_window4 = make_refiner("window4", 4)
make_window2 = make_refiner("window2", 2)
make_global = make_refiner("global", None)
make_window16_sparse = make_refiner("window16-sparse", 16, sparse=True)
make_window8_sparse = make_refiner("window8-sparse", 8, sparse=True)
make_window4_sparse = make_refiner("window4-sparse", 4, sparse=True)
make_window2_sparse = make_refiner("window2-sparse", 2, sparse=True)
make_global_sparse = make_refiner("global-sparse", None, sparse=True)
