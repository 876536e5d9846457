"""Systems: the record naming one component per slot, building it, and model directories on disk."""

import importlib.metadata as md
import json
from contextlib import contextmanager
from pathlib import Path

import attr
import attrs
import torch
from torch import nn

from d2it import checks
from d2it.config import build_config, config_to_dict
from d2it.errors import CheckpointError, ConfigError, UnknownComponentError
from d2it.io import atomic_write_text, load_into, load_safetensors, save_safetensors, staged_writes
from d2it.layout import unit_cells
from d2it.plugin_api import reserved_error
from d2it.registry import BUILTIN_DISTS, Registry, default_registry

FORMAT = 1
RECORD_FILE = "d2it.json"
DIFFUSERS_SYSTEM = "system"  # the folder of the d2it system inside a diffusers export of a D²iT system
# slot -> component kind
SLOTS = {
    "vae": "vae",
    "grain": "grain_predictor",
    "backbone": "backbone",
    "refine": "refiner",
    "sampler": "sampler",
    "schedule": "schedule",
    "attention": "attention",
}
# parts a component builds from the registry itself: slot -> (parent slot, parent option naming it, kind);
# their options live under their own slot (`--set regularizer.levels=8,8,8,8`) and reach the parent's
# factory as the context argument `<slot>_options`
SUB_SLOTS = {"regularizer": ("vae", "regularizer", "regularizer")}
# slots whose component holds weights -> the module attribute of System that owns them
WEIGHT_SLOTS = {"vae": "vae", "grain": "grain", "content": "content"}
DEFAULT_LATENT = (4, 8)  # channels, downsampling factor when no VAE is configured


GUIDANCE_CHANNELS = ("all", "dit")


def _check_channels(instance, attribute, value):
    if value not in GUIDANCE_CHANNELS:
        raise ValueError(f"channels must be one of {', '.join(GUIDANCE_CHANNELS)}, got {value!r}")


@attrs.frozen
class GuidanceConfig:
    """How classifier-free guidance is applied when sampling: `options["guidance"]` of a record.

    channels: `all` guides every noise channel (D²iT, standard CFG); `dit` guides only the first
    three, as DiT's published `forward_with_cfg` (the default of imported DiT systems, so they
    reproduce DiT's samples and FID).
    """

    channels: str = attrs.field(default="all", validator=_check_channels)


# record options that belong to no component slot -> their config class
RECORD_OPTIONS = {"guidance": GuidanceConfig}


def _freeze_options(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"options must map each slot to an object of options, got {value!r}")
    return {str(k): dict(v) for k, v in value.items()}


def _thresholds(value) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"thresholds must be a list of numbers, got {value!r}")
    return tuple(float(checks.check_number(x, "thresholds")) for x in value)


def _ascending(instance, attribute, value):
    if list(value) != sorted(value):
        raise ConfigError(f"thresholds must be ascending, got {list(value)}")


@attrs.frozen
class SystemRecord:
    """One component name per slot plus each one's options; round-trips through JSON."""

    backbone: str = attrs.field(default="dit-xl", validator=checks.of_type(str))
    vae: str | None = attrs.field(default=None, validator=checks.of_type(str, optional=True))
    grain: str | None = attrs.field(default=None, validator=checks.of_type(str, optional=True))
    refine: str | None = attrs.field(default=None, validator=checks.of_type(str, optional=True))
    sampler: str | None = attrs.field(default="ddpm", validator=checks.of_type(str, optional=True))
    schedule: str | None = attrs.field(default="linear", validator=checks.of_type(str, optional=True))
    attention: str = attrs.field(default="auto", validator=checks.of_type(str))
    options: dict = attrs.field(factory=dict, converter=_freeze_options)
    image_size: int = attrs.field(default=256, validator=checks.number(low=1, integer=True))
    num_classes: int = attrs.field(default=1000, validator=checks.number(low=1, integer=True))
    latent_scale: float = attrs.field(default=1.0, validator=checks.positive)
    thresholds: tuple = attrs.field(default=(), converter=_thresholds, validator=_ascending)

    def slot_names(self) -> dict[str, str]:
        """Slot -> component name for every slot that is set."""
        return {slot: getattr(self, slot) for slot in SLOTS if getattr(self, slot)}

    def sub_slot_names(self, options: dict | None = None) -> dict[str, str]:
        """Sub-slot -> component name (e.g. the VAE's regularizer) for those its parent's options name."""
        options = self.options if options is None else options
        out = {}
        for sub, (parent, option, _) in SUB_SLOTS.items():
            name = options.get(parent, {}).get(option) if getattr(self, parent, None) else None
            if isinstance(name, str) and name:
                out[sub] = name
        return out

    def sub_slot_context(self, parent: str) -> dict:
        """The `<sub-slot>_options` context arguments of the parent slot's factory."""
        return {
            f"{sub}_options": dict(self.options[sub])
            for sub, (p, _, _) in SUB_SLOTS.items()
            if p == parent and sub in self.options
        }

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return attr.asdict(self, retain_collection_types=False)

    @classmethod
    def from_dict(cls, data: dict) -> "SystemRecord":
        """Inverse of `to_dict`; unknown keys are an error."""
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"system record has unknown field {unknown[0]!r}")
        return cls(**data)

    def canonical(self, registry: Registry | None = None) -> "SystemRecord":
        """Validate every slot's name and options and fill in all defaults."""
        registry = registry or default_registry()
        options = {}
        for slot, name in self.slot_names().items():
            spec = registry.get(SLOTS[slot], name)
            config = build_config(spec.config, self.options.get(slot, {}), where=slot)
            options[slot] = config_to_dict(config)
            if name != spec.name:  # resolve aliases to the canonical name
                self = attrs.evolve(self, **{slot: spec.name})
        for key, config_class in RECORD_OPTIONS.items():
            options[key] = config_to_dict(build_config(config_class, self.options.get(key, {}), where=key))
        for sub, name in self.sub_slot_names(options).items():
            parent, option, kind = SUB_SLOTS[sub]
            try:
                spec = registry.get(kind, name)
            except UnknownComponentError as exc:
                where = f"{parent} {getattr(self, parent)!r}: {exc}"
                raise UnknownComponentError(reserved_error(SLOTS[parent], option, where)) from None
            options[sub] = config_to_dict(build_config(spec.config, self.options.get(sub, {}), where=sub))
        stray = sorted(set(self.options) - set(options))
        if stray:
            raise ConfigError(f"options given for slot {stray[0]!r}, which this system does not use")
        return attrs.evolve(self, options=options)


@attrs.frozen
class Geometry:
    """Where a system's latents live, worked out once from its record and VAE.

    latent_size: cells per side of the finest latent grid (image_size / the VAE's factor).
    channels: latent channels. grains: k of the VAE (2 without a VAE, as D²iT).
    routed: the content model is grain-aware (a refiner is set); a plain DiT is not.
    """

    image_size: int
    latent_size: int
    channels: int
    factor: int
    grains: int
    routed: bool

    @property
    def region(self) -> int:
        """Side, in finest cells, of one region (one grain-map entry): 2**(k-1)."""
        return unit_cells(0, self.grains)

    @property
    def grid(self) -> int:
        """Regions per side of a grain map."""
        return self.latent_size // self.region

    @property
    def content_grains(self) -> int | None:
        """The grains the content model and its noise follow; None for a plain DiT (i.i.d. noise)."""
        return self.grains if self.routed else None


def latent_geometry(record: SystemRecord, vae=None) -> Geometry:
    """The geometry of `record` with `vae` (its built VAE, or None for the default 4-channel F=8 latent)."""
    if vae is not None:
        channels, factor, grains = vae.latent_channels, vae.downsample, vae.grains
    else:
        (channels, factor), grains = DEFAULT_LATENT, 2
    if record.image_size % factor:
        raise ConfigError(f"image size {record.image_size} is not divisible by the VAE's factor {factor}")
    routed = record.refine is not None
    return Geometry(record.image_size, record.image_size // factor, channels, factor, grains, routed)


class System(nn.Module):
    """A built D²iT (or DiT) system: VAE, grain predictor and content transformer, and their geometry."""

    def __init__(self, record: SystemRecord, vae=None, grain=None, content=None, attention=None):
        super().__init__()
        self.record = record
        self.vae = vae
        self.grain = grain
        self.content = content
        self.attention = attention
        self.geometry = latent_geometry(record, vae)

    @property
    def latent_scale(self) -> float:
        """Multiply DVAE latents by this before diffusion (1/std of training latents)."""
        return self.record.latent_scale

    @property
    def grains(self) -> int:
        """Number of grains k of the latent (grain maps hold 0..k-1)."""
        return self.geometry.grains

    @property
    def routed(self) -> bool:
        """True when the content model is grain-aware (D²iT), False for a plain DiT."""
        return self.geometry.routed

    @property
    def region(self) -> int:
        """Side, in finest latent cells, of one grain-map region."""
        return self.geometry.region

    @property
    def latent_size(self) -> int:
        """Cells per side of the finest latent grid."""
        return self.geometry.latent_size

    @property
    def grid(self) -> int:
        """Regions per side of a grain map."""
        return self.geometry.grid

    def weight_modules(self) -> dict[str, nn.Module]:
        """Weight file stem -> module, for the parts this system has."""
        out = {}
        for stem, name in WEIGHT_SLOTS.items():
            module = getattr(self, name)
            if isinstance(module, nn.Module):
                out[stem] = module
        return out

    @property
    def device(self) -> torch.device:
        """Where the weights are (the first parameter or buffer; the CPU for none), as diffusers' models say it."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the weights (float32 for none), as diffusers' models say it."""
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    @classmethod
    def from_pretrained(
        cls, path, *, registry: Registry | None = None, parts=None, device="cpu", torch_dtype=None
    ) -> "System":
        """Load a saved system: a folder, or `"hf://OWNER/NAME[@REVISION]"` through the Hub's cache.

        path: a system folder (`d2it build`, `d2it export`, `save_pretrained`, a pushed repository's
            snapshot), the diffusers export of one (its `system/` folder is read), or a Hub reference,
            resolved as every `--system` of the command line is (`d2it.hub.resolve_system`: the same
            offline rules, `HF_HUB_OFFLINE` / `D2IT_OFFLINE`, and messages).
        parts: load only these weight files (e.g. `["vae"]`); the others stay randomly initialised.
        device: where the weights are loaded. torch_dtype: cast the floating-point weights (None: as saved).
        A thin name over `d2it.system.load`; user errors raise `d2it.D2itError`.
        """
        from d2it.hub import resolve_system

        folder = resolve_system(path)
        if not (folder / RECORD_FILE).is_file() and (folder / DIFFUSERS_SYSTEM / RECORD_FILE).is_file():
            folder = folder / DIFFUSERS_SYSTEM  # `d2it export --format diffusers` of a D²iT system
        system = load(folder, registry=registry, parts=parts, device=device)
        return system if torch_dtype is None else system.to(torch_dtype)

    def save_pretrained(self, path, *, extra: dict | None = None, registry: Registry | None = None) -> Path:
        """Write `d2it.json` and the weights into folder `path` (`d2it.system.save`); returns the folder.

        `System.from_pretrained(path)` loads it back, and `d2it push` uploads it. `extra` is recorded
        under `extra` in `d2it.json`.
        """
        save(self, path, extra=extra, registry=registry)
        return Path(path)

    def with_record(self, **changes) -> "System":
        """Replace fields of the record (latent scale, thresholds) in place; returns self."""
        self.record = attrs.evolve(self.record, **changes)
        if self.record.thresholds and hasattr(self.vae, "set_thresholds"):
            self.vae.set_thresholds(list(self.record.thresholds))
        return self


def build_vae(record: SystemRecord, registry: Registry | None = None):
    """The record's VAE (randomly initialised), or None; its regularizer's options come from their own slot."""
    if not record.vae:
        return None
    registry = registry or default_registry()
    record = record.canonical(registry)
    return registry.create(
        "vae", record.vae, record.options.get("vae"), where="vae", image_size=record.image_size,
        **record.sub_slot_context("vae"),
    )  # fmt: skip


def build(record: SystemRecord, registry: Registry | None = None) -> System:
    """Instantiate every slot of `record` (randomly initialised) into a System."""
    registry = registry or default_registry()
    record = record.canonical(registry)
    opts = record.options
    attention = registry.create("attention", record.attention, opts.get("attention"), where="attention")
    vae = build_vae(record, registry)
    geometry = latent_geometry(record, vae)
    backbone = registry.create(
        "backbone",
        record.backbone,
        opts.get("backbone"),
        where="backbone",
        input_size=geometry.latent_size,
        in_channels=geometry.channels,
        num_classes=record.num_classes,
        grains=geometry.content_grains,
        attention=attention,
    )
    content = backbone
    if geometry.routed:
        content = registry.create(
            "refiner", record.refine, opts.get("refine"), where="refine", backbone=backbone, attention=attention
        )
    grain = None
    if record.grain:
        grain = registry.create(
            "grain_predictor",
            record.grain,
            opts.get("grain"),
            where="grain",
            grid=geometry.grid,
            grains=geometry.grains,
            num_classes=record.num_classes,
            attention=attention,
        )
    check_sampling(record, registry)
    system = System(record, vae=vae, grain=grain, content=content, attention=attention)
    return system.with_record()


def check_sampling(record: SystemRecord, registry: Registry):
    """Build the schedule and sampler now, so that `build` rejects what sampling would."""
    opts = record.options
    if record.sampler:
        registry.create("sampler", record.sampler, opts.get("sampler"), where="sampler")
    if not record.schedule:
        return
    betas = registry.create("schedule", record.schedule, opts.get("schedule"), where="schedule")
    if isinstance(betas, torch.Tensor) and not (
        betas.numel() and torch.isfinite(betas).all() and (betas > 0).all() and (betas <= 1).all()
    ):
        raise ConfigError(f"schedule {record.schedule!r} gives betas outside (0, 1] with these options")


def package_versions() -> dict[str, str]:
    """Installed versions of the d2it distributions."""
    out = {}
    for dist in sorted(BUILTIN_DISTS):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def components(record: SystemRecord) -> dict[str, tuple[str, str]]:
    """Slot -> (kind, name) of every component of the record, sub-slots (the VAE's regularizer) included."""
    out = {slot: (SLOTS[slot], name) for slot, name in record.slot_names().items()}
    out.update({sub: (SUB_SLOTS[sub][2], name) for sub, name in record.sub_slot_names().items()})
    return out


def providers(record: SystemRecord, registry: Registry | None = None) -> dict[str, dict]:
    """Slot -> {kind, name, dist, version}: which installed distribution provides each component."""
    registry = registry or default_registry()
    out = {}
    for slot, (kind, name) in components(record).items():
        spec = registry.get(kind, name)
        out[slot] = {"kind": kind, "name": spec.name, "dist": spec.dist, "version": spec.version}
    return out


def check_providers(record: SystemRecord, doc: dict, registry: Registry | None = None, where: str = "this system"):
    """Fail with the distribution to install when a component of a saved system is not registered."""
    registry = registry or default_registry()
    saved = doc.get("providers") or {}
    for slot, (kind, name) in components(record).items():
        if any(name == s.name or name in s.aliases for s in registry.specs(kind)):
            continue
        label = kind.replace("_", " ")
        known = saved.get(slot) or {}
        if known.get("dist") and known.get("dist") != "?":
            raise UnknownComponentError(
                f"{where} uses the {label} {name!r} from {known['dist']} {known.get('version', '?')}, which is not "
                f"installed; install it with: pip install '{known['dist']}=={known.get('version', '?')}'"
            )
        registry.get(kind, name)  # the usual error listing the valid names


def save(system: System, directory, extra: dict | None = None, registry: Registry | None = None):
    """Write `d2it.json` and one `<part>.safetensors` per part that has weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with staged_writes() as stage:  # every file is written before any replaces its previous version
        for stem, module in system.weight_modules().items():
            meta = {"d2it.part": stem, "d2it.format": str(FORMAT)}
            save_safetensors(module.state_dict(), directory / f"{stem}.safetensors", meta, stage=stage)
        doc = {
            "format": FORMAT,
            "system": system.record.to_dict(),
            "versions": package_versions(),
            "providers": providers(system.record, registry),
            "extra": extra or {},
        }
        # the record is written (and moved into place) last, so a directory with d2it.json is complete
        atomic_write_text(directory / RECORD_FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n", stage=stage)


def read_record(directory) -> tuple[SystemRecord, dict]:
    """(record, whole document) from a model directory's d2it.json."""
    path = Path(directory) / RECORD_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a model directory: it has no {RECORD_FILE}")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(doc, dict):
            raise TypeError(f"the document is a JSON {type(doc).__name__}, not an object")
        if not isinstance(doc.get("system"), dict):
            raise TypeError("its 'system' entry is missing or not an object")
        record = SystemRecord.from_dict(doc["system"])
    except (ValueError, KeyError, TypeError, CheckpointError) as exc:  # JSON, UTF-8 and the record's validators
        raise CheckpointError(f"{path} is not a valid d2it system record ({exc})") from None
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {doc.get('format')!r}; this d2it reads format {FORMAT}")
    return record, doc


def load(directory, registry: Registry | None = None, parts=None, device="cpu") -> System:
    """Build the system recorded in `directory` and load its weights (all parts, or those named)."""
    record, doc = read_record(directory)
    check_providers(record, doc, registry, where=f"the system in {directory}")
    system = build(record, registry)
    for stem, module in system.weight_modules().items():
        if parts is not None and stem not in parts:
            continue
        tensors, _ = load_safetensors(Path(directory) / f"{stem}.safetensors", device=device)
        load_into(module, tensors, where=f"{Path(directory) / stem}.safetensors")
    return system.to(device)


def update_record(directory, **changes):
    """Change fields of a saved record (latent scale, thresholds) without touching weights."""
    record, doc = read_record(directory)
    doc["system"] = attrs.evolve(record, **changes).to_dict()
    atomic_write_text(Path(directory) / RECORD_FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n")


@contextmanager
def eval_mode(module: nn.Module):
    """Eval mode (no dropout, no label dropout) inside the block; every submodule's own mode is restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def update_extra(directory, **entries):
    """Set entries of a saved record's `extra` section (e.g. the stage-1 loss convention) without touching weights."""
    _, doc = read_record(directory)
    doc["extra"] = {**doc.get("extra", {}), **entries}
    atomic_write_text(Path(directory) / RECORD_FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def torch_device(name: str | None = None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
