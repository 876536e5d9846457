"""The Hugging Face Hub: `hf://REPO_ID[@REVISION]` systems from the Hub's cache, VAEs by name, `push_system`.

Hub systems resolve in d2it-core (`d2it.hub`, re-exported here), the one path that the command line,
`d2it.System.from_pretrained` and `--vae` share: everything goes through `huggingface_hub` and its
cache (`HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `D2IT_OFFLINE`): a repository is downloaded once and read
from the cache afterwards; offline, a cached copy is used and a missing one is a user error naming
the repository.
"""

import json
from pathlib import Path

from d2it import system as systems
from d2it.errors import CheckpointError
from d2it.hub import PREFIX, SYSTEM_FILES, is_hub, parse, resolve_system, snapshot
from d2it.registry import default_registry
from d2it_cli.interop.sd_vae import SD_VAE_HUB

__all__ = [
    "PREFIX", "SYSTEM_FILES", "is_hub", "model_card", "parse", "push_system", "resolve_system", "resolve_vae",
    "snapshot",
]  # fmt: skip

VAE_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
CARD = "README.md"


def resolve_vae(spec: str) -> Path:
    """A VAE source: a name of `SD_VAE_HUB` or `hf://REPO` (fetched through the Hub's cache), else a local path."""
    if spec in SD_VAE_HUB or is_hub(spec):
        repo_id, revision = parse(SD_VAE_HUB.get(spec, spec))
        return snapshot(repo_id, revision, allow_patterns=VAE_FILES)
    path = Path(spec)
    if not path.exists():
        names = ", ".join(SD_VAE_HUB)
        raise CheckpointError(f"VAE {spec} is neither a file or folder nor a known name ({names}, hf://OWNER/NAME)")
    return path


# -- pushing -------------------------------------------------------------------------------------
def _eval_documents(folder: Path) -> dict[str, dict]:
    """Relative path -> document of every JSON file in `folder` (3 levels deep) that holds `metrics`."""
    found = {}
    for path in sorted(folder.glob("**/*.json")):
        rel = path.relative_to(folder)
        if len(rel.parts) > 3 or rel.name == systems.RECORD_FILE:
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("metrics"), dict):
            found[rel.as_posix()] = doc
    return found


def _training_settings(folder: Path) -> dict[str, dict]:
    """Trainer name -> its run's `train.json` settings, for the runs kept in the folder."""
    out = {}
    for path in sorted(folder.glob("runs/*/train.json")):
        try:
            out[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def _providers(record, versions: dict, registry) -> list[tuple[str, str, str]]:
    rows = []
    for slot, name in record.slot_names().items():
        try:
            spec = registry.get(systems.SLOTS[slot], name)
            provider = f"{spec.dist} {spec.version}"
        except Exception:  # a component whose plugin is not installed here: say so, do not fail the card
            provider = "not installed here"
        rows.append((slot, name, provider))
    return rows


def model_card(folder, repo_id: str, registry=None) -> str:
    """A Markdown model card for the system in `folder`: components, versions, training, metrics, usage."""
    folder = Path(folder)
    registry = registry or default_registry()
    record, doc = systems.read_record(folder)
    versions = doc.get("versions", {})
    lines = [
        "---",
        "library_name: d2it",
        "tags:",
        "- d2it",
        "- diffusion",
        "- image-generation",
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A [d2it](https://pypi.org/project/d2it-cli/) system: {record.image_size}x{record.image_size} images, "
        f"{record.num_classes} classes, latent scale {record.latent_scale:g}.",
        "",
        "```bash",
        f"d2it sample --system hf://{repo_id} --num 16 --out samples",
        "```",
        "",
        "```python",
        "import d2it",
        "from d2it_sampling import Pipeline",
        "",
        f'pipe = Pipeline(d2it.System.from_pretrained("hf://{repo_id}"))',
        "images = pipe([0, 1, 2, 3], seed=0)  # PIL images, as d2it sample --seed 0 draws them",
        "```",
        "",
        "## Components",
        "",
        "| slot | component | provider | options |",
        "|---|---|---|---|",
    ]
    for slot, name, provider in _providers(record, versions, registry):
        options = json.dumps(record.options.get(slot, {}), sort_keys=True)
        lines.append(f"| {slot} | `{name}` | {provider} | `{options}` |")
    if "guidance" in record.options:
        lines += ["", f"Guidance channels: `{record.options['guidance'].get('channels')}`."]
    lines += ["", "## Versions", "", "Written by:", ""]
    lines += [f"- {dist} {version}" for dist, version in sorted(versions.items())] or ["- (not recorded)"]
    extra = doc.get("extra") or {}
    training = _training_settings(folder)
    if training or extra:
        lines += ["", "## Training", ""]
        for name, settings in training.items():
            lines += [f"`{name}`:", "", "```json", json.dumps(settings, indent=2, sort_keys=True), "```", ""]
        if extra:
            lines += ["Recorded with the system:", "", "```json", json.dumps(extra, indent=2, sort_keys=True), "```"]
    evals = _eval_documents(folder)
    if evals:
        lines += ["", "## Evaluation", ""]
        for rel, ev in evals.items():
            lines += [f"`{rel}`:", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in ev["metrics"].items()]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _upload_list(folder: Path) -> list[str]:
    if is_diffusers_export(folder):  # every file of the export (the card is generated), its d2it record included
        files = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
        return [f for f in files if f != CARD and not any(part.startswith(".") for part in f.split("/"))]
    systems.read_record(folder)  # a system directory, or a clear error
    files = [systems.RECORD_FILE]
    files += sorted(p.name for p in folder.glob("*.safetensors"))
    files += sorted(_eval_documents(folder))
    return files


# -- diffusers exports (`d2it export --format diffusers`) ------------------------------------------
def is_diffusers_export(folder) -> bool:
    """True for a folder `d2it export --format diffusers` wrote (model_index.json and d2it_export.json)."""
    from d2it_cli.interop.to_diffusers import EXPORT_RECORD, MODEL_INDEX

    folder = Path(folder)
    return (folder / MODEL_INDEX).is_file() and (folder / EXPORT_RECORD).is_file()


def diffusers_card(folder, repo_id: str, registry=None) -> str:
    """The model card of a diffusers export: how to load it, how it agrees with d2it, the components, versions."""
    from d2it_cli.interop.to_diffusers import EXPORT_RECORD, PIPELINE_CLASS

    folder = Path(folder)
    registry = registry or default_registry()
    path = folder / EXPORT_RECORD
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
        record = systems.SystemRecord.from_dict(doc["system"])
        form = str(doc["pipeline"])
    except (OSError, ValueError, KeyError, TypeError, CheckpointError) as exc:
        raise CheckpointError(f"{path} is not a d2it export record ({exc})") from None
    custom = form == PIPELINE_CLASS
    name = repo_id.split("/")[-1]
    sampler = (doc.get("sampler") or {}).get("name")
    lines = ["---", "library_name: diffusers", "tags:", "- d2it", "- diffusion", "- image-generation"]
    lines += ["- dit"] if not custom else ["- d2it-custom-pipeline"]
    lines += ["---", "", f"# {name}", ""]
    what = "a D²iT system" if record.grain or record.refine else "a DiT system"
    lines += [
        f"A [d2it](https://pypi.org/project/d2it-cli/) export of {what} for diffusers' `{form}`: "
        f"{record.image_size}x{record.image_size} images, {record.num_classes} classes, latent scale "
        f"{record.latent_scale:g}.",
        "",
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
    ]
    if custom:
        lines += [
            "# the pipeline's code (pipeline_d2it.py) runs d2it: pip install d2it-cli",
            f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)',
            "images = pipe(class_labels=[0, 1], num_inference_steps=None, guidance_scale=1.5,",
            "              generator=torch.Generator().manual_seed(0)).images  # = d2it sample --seed 0",
        ]
    else:
        lines += [
            f'pipe = DiffusionPipeline.from_pretrained("{repo_id}")',
            "images = pipe(class_labels=[0, 1], num_inference_steps=50, guidance_scale=1.5,",
            "              generator=torch.Generator().manual_seed(0)).images",
        ]
    lines += ["```", "", "## Agreement with d2it", ""]
    lines += [f"- {note}" for note in doc.get("agreement", [])] or ["- (not recorded)"]
    if sampler:
        lines += ["", f"Exported with d2it's `{sampler}` sampler ({json.dumps(doc['sampler'].get('options', {}))})."]
    lines += ["", "## Components", "", "| slot | component | provider | options |", "|---|---|---|---|"]
    for slot, component, provider in _providers(record, doc.get("versions", {}), registry):
        lines.append(
            f"| {slot} | `{component}` | {provider} | `{json.dumps(record.options.get(slot, {}), sort_keys=True)}` |"
        )
    lines += ["", "## Versions", "", "Exported by:", ""]
    lines += [f"- {dist} {version}" for dist, version in sorted(doc.get("versions", {}).items())] or [
        "- (not recorded)"
    ]
    return "\n".join(lines).rstrip() + "\n"


def push_system(
    folder, repo_id: str, *, private: bool = False, revision=None, message=None, dry_run=False, registry=None
) -> dict:
    """Upload a system folder, or its diffusers export, to the Hub in one commit; returns dict(url, files, card).

    A system: d2it.json, every `*.safetensors`, the JSON eval results found in the folder and a generated
    model card (README.md); runs, checkpoints and caches stay local. A diffusers export (`d2it export
    --format diffusers`): every file of it and a diffusers model card (`diffusers_card`).
    """
    folder = Path(folder)
    parse(repo_id)  # validate the id before touching anything
    files = _upload_list(folder)
    diffusers = is_diffusers_export(folder)
    card = diffusers_card(folder, repo_id, registry) if diffusers else model_card(folder, repo_id, registry)
    if dry_run:
        return {"url": None, "files": [*files, CARD], "card": card, "diffusers": diffusers}
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card.encode()))
    what = "diffusers export" if diffusers else "d2it system"
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.create_commit(
            repo_id,
            operations=operations,
            commit_message=message or f"Upload {what} {folder.name}",
            revision=revision,
            repo_type="model",
        )
    except HfHubHTTPError as exc:
        hint = "log in first (hf auth login, or set HF_TOKEN)"
        raise CheckpointError(f"cannot push to {repo_id} ({exc}); {hint}") from None
    return {"url": str(url), "files": [*files, CARD], "card": card, "diffusers": diffusers}
