"""Grain predictors: the Dynamic Grain Transformer (`dgt-s`, `dgt-b`) and fixed/random baselines.

Every predictor maps classes (B,) to grain maps (B, grid, grid) int64 with values 0..k-1 (0 the
coarsest) through `sample(classes, generator=None, **options)`; `trainable` ones also have
`loss(grain_maps, classes)` and `example_inputs(batch)`. The null class (index `num_classes`) may be
passed to `sample` for unconditional maps.

The Dynamic Grain Transformer is a class-conditional bidirectional transformer over the region tokens
(vocabulary: the k grains plus [MASK]), trained and sampled as MaskGIT (Chang et al., CVPR 2022):
masked-token cross-entropy with the mask ratio drawn from a cosine schedule, and iterative
confidence-based unmasking with annealed Gumbel noise and optional classifier-free guidance.
"""

import math

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from d2it.config import coerce
from d2it.errors import ConfigError, DataError
from d2it.labels import check_classes
from d2it_transformers.dit import DiTBlock, FinalLayer, LabelEmbedder, get_2d_sincos_pos_embed, init_dit_weights

# ---------------------------------------------------------------------------------------------
# Helpers: mask schedule, random draws, input checks
# ---------------------------------------------------------------------------------------------


def cosine_schedule(r):
    """MaskGIT's mask ratio γ(r) = cos(πr/2): 1 at r = 0 (all masked), 0 at r = 1."""
    return torch.cos(torch.as_tensor(r, dtype=torch.float64) * (math.pi / 2))


def unmasking_schedule(tokens: int, steps: int) -> list[int]:
    """Tokens still masked after each of `steps` unmasking steps: floor(N·γ((t+1)/T)), ending at 0."""
    remaining, prev = [], tokens
    for t in range(steps):
        left = 0 if t == steps - 1 else math.floor(tokens * float(cosine_schedule((t + 1) / steps)))
        left = max(0, min(left, prev - 1))  # every step reveals at least one token
        remaining.append(left)
        prev = left
    return remaining


def _rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform [0, 1) draws made on the generator's device (so a CPU generator drives any device)."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _gumbel(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard Gumbel noise -log(-log u)."""
    u = _rand(shape, generator, device)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))


def _check_options(given: dict, defaults: dict, where: str) -> dict:
    """Merge per-call sampling options into defaults; unknown names raise ConfigError."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"{where} has no sampling option {unknown[0]!r}; valid options: {valid}")
    return {**defaults, **given}


def _option(tp, value, name: str, ok, need: str):
    """Coerce a sampling option (strings from the command line too) and check it, else ConfigError."""
    try:
        parsed = coerce(tp, value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or not ok(parsed):
        raise ConfigError(f"{name} must be {need}, got {value!r}")
    return parsed


def _check_sampling(opts: dict) -> dict:
    """Validate the transformer's sampling options: steps >= 1, temperature >= 0, finite cfg_scale."""
    return {
        "steps": _option(int, opts["steps"], "steps", lambda v: v >= 1, "a positive integer"),
        "temperature": _option(float, opts["temperature"], "temperature", lambda v: v >= 0, "a number >= 0"),
        "cfg_scale": _option(float, opts["cfg_scale"], "cfg_scale", math.isfinite, "a finite number"),
    }


def _check_ratio(ratio) -> float:
    """A probability in [0, 1]."""
    return _option(float, ratio, "ratio", lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1")


def _check_context(grid: int, grains: int, num_classes: int):
    """The factory context a grain predictor needs."""
    for key, value in (("grid", grid), ("grains", grains), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"grain predictor {key} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Fixed and random predictors
# ---------------------------------------------------------------------------------------------


class FixedGrainPredictor(nn.Module):
    """Every region gets the same grain (`all-fine`: k-1, `all-coarse`: 0)."""

    trainable = False
    stochastic = False

    def __init__(self, grid: int, grains: int, num_classes: int, grain: int):
        super().__init__()
        self.grid, self.grains, self.num_classes, self.grain = grid, grains, num_classes, grain

    def sample(self, classes, generator: torch.Generator | None = None, **options) -> torch.Tensor:
        """Constant grain maps (B, grid, grid)."""
        classes = check_classes(classes, self.num_classes, null=True)
        _check_options(options, {}, "this grain predictor")
        return torch.full((classes.shape[0], self.grid, self.grid), self.grain, dtype=torch.long, device=classes.device)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, grains={self.grains}, grain={self.grain}"


class RandomGrainPredictor(nn.Module):
    """Each region independently takes the finest grain (k-1) with probability `ratio`, else the coarsest (0)."""

    trainable = False
    stochastic = True

    def __init__(self, grid: int, grains: int, num_classes: int, ratio: float = 0.5):
        super().__init__()
        self.grid, self.grains, self.num_classes = grid, grains, num_classes
        self.ratio = _check_ratio(ratio)

    def sample(self, classes, generator: torch.Generator | None = None, **options) -> torch.Tensor:
        """Random grain maps; option `ratio` overrides the configured fine probability for this call."""
        classes = check_classes(classes, self.num_classes, null=True)
        ratio = _check_ratio(_check_options(options, {"ratio": self.ratio}, "grain predictor 'random'")["ratio"])
        u = _rand((classes.shape[0], self.grid, self.grid), generator, classes.device)
        return (u < ratio).long() * (self.grains - 1)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, grains={self.grains}, ratio={self.ratio}"


# ---------------------------------------------------------------------------------------------
# Dynamic Grain Transformer
# ---------------------------------------------------------------------------------------------


class GrainTransformer(nn.Module):
    """Class-conditional masked transformer over the grid's region tokens (MaskGIT over grain maps)."""

    trainable = True
    stochastic = True

    def __init__(
        self,
        grid: int,
        grains: int,
        num_classes: int,
        attention=None,
        depth: int = 12,
        hidden_size: int = 384,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        class_dropout: float = 0.1,
        steps: int = 12,
        temperature: float = 1.0,
        cfg_scale: float = 1.0,
    ):
        super().__init__()
        self.grid, self.grains, self.num_classes = grid, grains, num_classes
        self.mask_id = grains  # the [MASK] token follows the k grain tokens
        self.hidden_size, self.class_dropout = hidden_size, class_dropout
        self.defaults = _check_sampling({"steps": steps, "temperature": temperature, "cfg_scale": cfg_scale})

        self.token_embed = nn.Embedding(grains + 1, hidden_size)
        pos = torch.as_tensor(get_2d_sincos_pos_embed(hidden_size, grid), dtype=torch.float32)
        self.register_buffer("pos_embed", pos.reshape(1, grid * grid, hidden_size), persistent=False)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, attention) for _ in range(depth))
        self.head = FinalLayer(hidden_size, 1, grains)  # one token -> k logits
        # DiT's initialisation: xavier linears, N(0, 0.02) embeddings, zero adaLN-modulation and output layers
        init_dit_weights(self)
        nn.init.normal_(self.token_embed.weight, std=0.02)

    # -- network ---------------------------------------------------------------------------------
    @property
    def label_dropout(self) -> float:
        """The probability that training drops a label to the null class."""
        return self.class_dropout

    def logits(self, tokens: torch.Tensor, y: torch.Tensor, train: bool = False, force_drop_ids=None) -> torch.Tensor:
        """Logits (B, N, k) for tokens (B, N) in 0..k (k = [MASK]) and classes y (B,); `train` drops labels
        (exactly those where `force_drop_ids` is 1, when given)."""
        x = self.token_embed(tokens) + self.pos_embed.to(self.token_embed.weight.dtype)
        c = self.y_embedder(y, train, force_drop_ids)
        for block in self.blocks:
            x = block(x, c)
        return self.head(x, c)

    def forward(self, tokens: torch.Tensor, y: torch.Tensor, force_drop_ids=None) -> torch.Tensor:
        """Logits (B, N, k); labels are dropped to the null class with `class_dropout` in training mode."""
        return self.logits(tokens, y, self.training, force_drop_ids)

    def example_inputs(self, batch: int = 1) -> tuple:
        """(tokens, classes) for one forward call: tokens cycling through every grain and [MASK], class 0."""
        device = self.token_embed.weight.device
        n = self.grid * self.grid
        tokens = torch.arange(batch * n, device=device).reshape(batch, n) % (self.grains + 1)
        return tokens, torch.zeros(batch, dtype=torch.long, device=device)

    def guided_logits(self, tokens: torch.Tensor, classes: torch.Tensor, cfg_scale: float = 1.0) -> torch.Tensor:
        """Classifier-free guided logits uncond + s·(cond - uncond), both halves in one batched forward."""
        if cfg_scale == 1.0:
            return self.logits(tokens, classes)
        null = torch.full_like(classes, self.num_classes)
        both = self.logits(torch.cat([tokens, tokens]), torch.cat([classes, null]))
        cond, uncond = both.chunk(2)
        return uncond + cfg_scale * (cond - uncond)

    # -- training --------------------------------------------------------------------------------
    def _tokens(self, grain_maps) -> torch.Tensor:
        """Validate (B, grid, grid) grain maps and flatten them to (B, N) tokens."""
        want = (self.grid, self.grid)
        if not isinstance(grain_maps, torch.Tensor) or grain_maps.ndim != 3 or tuple(grain_maps.shape[1:]) != want:
            shape = tuple(grain_maps.shape) if isinstance(grain_maps, torch.Tensor) else type(grain_maps).__name__
            raise DataError(f"grain maps must have shape (B, {self.grid}, {self.grid}), got {shape}")
        if grain_maps.dtype.is_floating_point:
            raise DataError(f"grain maps must be integer tensors, got {grain_maps.dtype}")
        if grain_maps.numel() and (int(grain_maps.min()) < 0 or int(grain_maps.max()) >= self.grains):
            low, high = int(grain_maps.min()), int(grain_maps.max())
            raise DataError(f"grain map values must lie in 0..{self.grains - 1}, got {low}..{high}")
        return grain_maps.long().flatten(1)

    def loss(
        self,
        grain_maps: torch.Tensor,
        classes: torch.Tensor,
        generator: torch.Generator | None = None,
        mask_draws: tuple[torch.Tensor, torch.Tensor] | None = None,
        force_drop_ids=None,
        token_count=None,
    ):
        """Masked-token cross-entropy (nats per masked token); mask ratio γ(r), r ~ U[0, 1), at least one token.

        `mask_draws` = (r (B,), order (B, N)) uniform [0, 1) draws to use instead of drawing them, and
        `force_drop_ids` the labels to drop (as DiT's): the trainer draws both per sample. `token_count`:
        the number of masked tokens to divide by instead of this batch's (a micro-batch's share of the
        global batch's, from `masked_tokens`).
        """
        device = self.token_embed.weight.device
        tokens = self._tokens(grain_maps).to(device)
        y = check_classes(classes, self.num_classes, null=True).to(device)
        if y.shape[0] != tokens.shape[0]:
            raise DataError(f"got {tokens.shape[0]} grain maps but {y.shape[0]} classes")
        b, n = tokens.shape
        if mask_draws is None:
            mask_draws = (_rand((b,), generator, device), _rand((b, n), generator, device))
        ratio, order = (u.to(device) for u in mask_draws)
        if tuple(ratio.shape) != (b,) or tuple(order.shape) != (b, n):
            raise DataError(f"mask_draws must have shapes ({b},) and ({b}, {n})")
        count = self.masked_tokens(ratio)
        ranks = order.argsort(dim=1).argsort(dim=1)
        mask = ranks < count[:, None]
        drop = () if force_drop_ids is None else (force_drop_ids,)
        logits = self(tokens.masked_fill(mask, self.mask_id), y, *drop)
        if token_count is None:
            return F.cross_entropy(logits[mask].float(), tokens[mask])
        return F.cross_entropy(logits[mask].float(), tokens[mask], reduction="sum") / token_count

    def masked_tokens(self, ratio: torch.Tensor) -> torch.Tensor:
        """Tokens the loss masks per sample for uniform draws `ratio` (B,): ceil(γ(r)·N), at least one."""
        n = self.grid * self.grid
        return (cosine_schedule(ratio) * n).ceil().clamp(1, n).long()

    # -- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, classes, generator: torch.Generator | None = None, **options) -> torch.Tensor:
        """MaskGIT decoding; options `steps`, `temperature` (Gumbel noise on confidences), `cfg_scale` (1 = off)."""
        opts = _check_sampling(_check_options(options, self.defaults, f"grain transformer (grains={self.grains})"))
        if opts["cfg_scale"] != 1.0 and self.class_dropout == 0:
            raise ConfigError("cfg_scale other than 1 needs a trained null class: train with class_dropout > 0")
        device = self.token_embed.weight.device
        y = check_classes(classes, self.num_classes, null=True).to(device)
        b, n = y.shape[0], self.grid * self.grid
        steps = min(opts["steps"], n)
        tokens = torch.full((b, n), self.mask_id, dtype=torch.long, device=device)
        for t, remaining in enumerate(unmasking_schedule(n, steps)):
            logp = self.guided_logits(tokens, y, opts["cfg_scale"]).float().log_softmax(dim=-1)
            drawn = (logp + _gumbel(logp.shape, generator, device)).argmax(dim=-1)
            unknown = tokens == self.mask_id
            drawn = torch.where(unknown, drawn, tokens)
            noise = opts["temperature"] * (1.0 - (t + 1) / steps)
            confidence = logp.gather(-1, drawn[..., None])[..., 0] + noise * _gumbel((b, n), generator, device)
            confidence = confidence.masked_fill(~unknown, float("inf"))
            order = confidence.argsort(dim=1, stable=True)
            remask = torch.zeros_like(unknown).scatter(1, order[:, :remaining], True)
            tokens = drawn.masked_fill(remask, self.mask_id)
        return tokens.reshape(b, self.grid, self.grid)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def _positive(instance, attribute, value):
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


def _above_zero(instance, attribute, value):
    if value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0, got {value}")


def _non_negative(instance, attribute, value):
    if value < 0:
        raise ValueError(f"{attribute.name} must be at least 0, got {value}")


def _probability(instance, attribute, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must lie between 0 and 1, got {value}")


@attrs.frozen
class GrainTransformerConfig:
    """Options of `dgt-s` (defaults) and `dgt-b`."""

    depth: int = attrs.field(default=12, validator=_positive)
    hidden_size: int = attrs.field(default=384, validator=_positive)
    num_heads: int = attrs.field(default=6, validator=_positive)
    mlp_ratio: float = attrs.field(default=4.0, validator=_above_zero)
    class_dropout: float = attrs.field(default=0.1, validator=_probability)
    steps: int = attrs.field(default=12, validator=_positive)
    temperature: float = attrs.field(default=1.0, validator=_non_negative)
    cfg_scale: float = 1.0

    def __attrs_post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be a multiple of 4 (2-D sin-cos position), got {self.hidden_size}")


@attrs.frozen
class GrainTransformerBConfig(GrainTransformerConfig):
    """Options of `dgt-b`: width 768, 12 heads."""

    hidden_size: int = attrs.field(default=768, validator=_positive)
    num_heads: int = attrs.field(default=12, validator=_positive)


@attrs.frozen
class RandomConfig:
    """Options of `random`: the probability that a region takes the finest grain."""

    ratio: float = attrs.field(default=0.5, validator=_probability)


@attrs.frozen
class FixedConfig:
    """`all-fine` and `all-coarse` have no options."""


# ---------------------------------------------------------------------------------------------
# Factories (registered in `d2it_transformers.plugin`)
# ---------------------------------------------------------------------------------------------


def make_grain_transformer(config: GrainTransformerConfig, *, grid: int, grains: int, num_classes: int, attention=None):
    """Factory of `dgt-*`."""
    _check_context(grid, grains, num_classes)
    return GrainTransformer(grid, grains, num_classes, attention, **attrs.asdict(config))


def make_random(config: RandomConfig, *, grid: int, grains: int, num_classes: int, attention=None):
    """Factory of `random`."""
    _check_context(grid, grains, num_classes)
    return RandomGrainPredictor(grid, grains, num_classes, config.ratio)


def make_all_fine(config: FixedConfig, *, grid: int, grains: int, num_classes: int, attention=None):
    """Factory of `all-fine`."""
    _check_context(grid, grains, num_classes)
    return FixedGrainPredictor(grid, grains, num_classes, grains - 1)


def make_all_coarse(config: FixedConfig, *, grid: int, grains: int, num_classes: int, attention=None):
    """Factory of `all-coarse`."""
    _check_context(grid, grains, num_classes)
    return FixedGrainPredictor(grid, grains, num_classes, 0)
