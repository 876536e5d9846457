"""`hf://OWNER/NAME[@REVISION]` systems: resolved to a local folder through the Hugging Face Hub's cache.

The one resolver of Hub systems: `d2it.System.from_pretrained`, every `--system` / `--from` of the
command line and `d2it import --vae` all come through `resolve_system` / `snapshot`. Everything goes
through `huggingface_hub` and its cache (`HF_HUB_CACHE`): a repository is downloaded once and read
from the cache afterwards. Offline — `HF_HUB_OFFLINE=1` (huggingface_hub's switch) or `D2IT_OFFLINE=1`
(d2it's, which also stops pretrained-weight downloads) — a cached copy is used and a missing one is a
user error naming the repository. `huggingface_hub` is an optional dependency of d2it-core
(`pip install 'd2it-core[hub]'`; d2it-cli always has it); it is imported only when a Hub system is used.
"""

from pathlib import Path

from d2it.errors import CheckpointError, ConfigError

PREFIX = "hf://"
RECORD_FILE = "d2it.json"  # d2it.system.RECORD_FILE (not imported: this module stays free of torch)
SYSTEM_FILES = ["d2it.json", "*.safetensors", "*.json", "README.md"]
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "D2IT_OFFLINE")


def is_hub(spec) -> bool:
    """True for an `hf://` system reference."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of `hf://org/name[@revision]` (the prefix is optional here)."""
    body = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    repo_id, _, revision = body.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{spec!r} is not a Hub system: expected hf://OWNER/NAME or hf://OWNER/NAME@REVISION")
    return repo_id, revision or None


def _hub():
    """The huggingface_hub module, or a CheckpointError saying how to install it."""
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(
            "hf:// systems need huggingface_hub, which is not installed; "
            "pip install 'd2it-core[hub]' (or pip install huggingface_hub), or pass a local folder"
        ) from None
    return huggingface_hub


def d2it_offline() -> bool:
    """True when `D2IT_OFFLINE` forbids downloads (the Hub's cache is then used without asking the Hub)."""
    from d2it.weights import offline  # torch-free at call time only; d2it.weights imports torch

    return offline()


def snapshot(repo_id: str, revision: str | None = None, allow_patterns=None) -> Path:
    """The local folder of a Hub repository, from the Hub's cache or downloaded into it."""
    _hub()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = repo_id if revision is None else f"{repo_id}@{revision}"
    local_only = d2it_offline()
    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=allow_patterns, local_files_only=local_only
        )
        return Path(folder)
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{where} is not in the Hugging Face cache and the Hub cannot be reached (offline); "
            f"connect once to download it{_offline_switches(local_only)}"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise CheckpointError(f"Hub repository {repo_id} does not exist or you have no access to it") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"Hub repository {repo_id} has no revision {revision!r}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"cannot fetch {where} from the Hub ({type(exc).__name__}: {exc})") from None


def _offline_switches(d2it_switch: bool) -> str:
    """ ", or unset HF_HUB_OFFLINE and D2IT_OFFLINE": the switches that are on, for the offline message."""
    from huggingface_hub import constants

    on = [name for name, set_ in (("HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE), ("D2IT_OFFLINE", d2it_switch)) if set_]
    return f", or unset {' and '.join(on)}" if on else ""


def resolve_system(spec) -> Path:
    """A local model directory for `spec`: the path itself, or the cached snapshot of `hf://REPO[@REV]`."""
    if not is_hub(spec):
        return Path(spec)
    repo_id, revision = parse(spec)
    folder = snapshot(repo_id, revision, allow_patterns=SYSTEM_FILES)
    if not (folder / RECORD_FILE).is_file():
        raise CheckpointError(f"Hub repository {repo_id} is not a d2it system: it has no {RECORD_FILE}")
    return folder
