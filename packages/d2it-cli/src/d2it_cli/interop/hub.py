"""The Hugging Face Hub: `hf://REPO_ID[@REVISION]` systems from the Hub's cache, VAEs by name, `push_system`.

Everything goes through `huggingface_hub` and its cache (`HF_HUB_CACHE`, `HF_HUB_OFFLINE`): a
repository is downloaded once and read from the cache afterwards; offline, a cached copy is used
and a missing one is a user error naming the repository.
"""

import json
from pathlib import Path

from d2it import system as systems
from d2it.errors import CheckpointError, ConfigError
from d2it.registry import default_registry
from d2it_cli.interop.sd_vae import SD_VAE_HUB

PREFIX = "hf://"
SYSTEM_FILES = ["d2it.json", "*.safetensors", "*.json", "README.md"]
VAE_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
CARD = "README.md"


def parse(spec: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of `hf://org/name[@revision]`."""
    body = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    repo_id, _, revision = body.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{spec!r} is not a Hub system: expected hf://OWNER/NAME or hf://OWNER/NAME@REVISION")
    return repo_id, revision or None


def snapshot(repo_id: str, revision: str | None = None, allow_patterns=None) -> Path:
    """The local folder of a Hub repository, from the Hub's cache or downloaded into it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = repo_id if revision is None else f"{repo_id}@{revision}"
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{where} is not in the Hugging Face cache and the Hub cannot be reached (offline); "
            "connect once to download it, or unset HF_HUB_OFFLINE"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise CheckpointError(f"Hub repository {repo_id} does not exist or you have no access to it") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"Hub repository {repo_id} has no revision {revision!r}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"cannot fetch {where} from the Hub ({type(exc).__name__}: {exc})") from None


def is_hub(spec) -> bool:
    """True for an `hf://` system reference."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def resolve_system(spec) -> Path:
    """A local model directory for `spec`: the path itself, or the cached snapshot of `hf://REPO[@REV]`."""
    if not is_hub(spec):
        return Path(spec)
    repo_id, revision = parse(spec)
    folder = snapshot(repo_id, revision, allow_patterns=SYSTEM_FILES)
    if not (folder / systems.RECORD_FILE).is_file():
        raise CheckpointError(f"Hub repository {repo_id} is not a d2it system: it has no {systems.RECORD_FILE}")
    return folder


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
    systems.read_record(folder)  # a system directory, or a clear error
    files = [systems.RECORD_FILE]
    files += sorted(p.name for p in folder.glob("*.safetensors"))
    files += sorted(_eval_documents(folder))
    return files


def push_system(
    folder, repo_id: str, *, private: bool = False, revision=None, message=None, dry_run=False, registry=None
) -> dict:
    """Upload a system folder to the Hub in one commit; returns dict(url, files).

    Uploaded: d2it.json, every `*.safetensors`, the JSON eval results found in the folder and a
    generated model card (README.md); runs, checkpoints and caches stay local.
    """
    folder = Path(folder)
    parse(repo_id)  # validate the id before touching anything
    files = _upload_list(folder)
    card = model_card(folder, repo_id, registry)
    if dry_run:
        return {"url": None, "files": [*files, CARD], "card": card}
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card.encode()))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.create_commit(
            repo_id,
            operations=operations,
            commit_message=message or f"Upload d2it system {folder.name}",
            revision=revision,
            repo_type="model",
        )
    except HfHubHTTPError as exc:
        hint = "log in first (hf auth login, or set HF_TOKEN)"
        raise CheckpointError(f"cannot push to {repo_id} ({exc}); {hint}") from None
    return {"url": str(url), "files": [*files, CARD], "card": card}
