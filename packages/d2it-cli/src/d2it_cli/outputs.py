"""Output folders of ours: a marker file lists what we wrote, so reruns replace exactly our own files.

A folder is ours when it holds `.d2it-output.json` (or is new or empty, and then gets one). We
refuse to write into (and so to clear) a non-empty folder without the marker, and on a rerun we
delete only the files the marker lists before writing the new ones.
"""

import json
import os
from pathlib import Path

from d2it import checks
from d2it.errors import ConfigError, D2itError
from d2it.io import atomic_write_text, clean_temporary_files
from d2it.system import RECORD_FILE as SYSTEM_RECORD
from d2it_cli.locks import LOCK_NAME

MARKER = ".d2it-output.json"


class ForeignFolderError(D2itError):
    """A non-empty folder that d2it did not create."""


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (MARKER, LOCK_NAME))


def read_marker(folder) -> dict | None:
    """The marker of an output folder, or None when there is none."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("files", []), list):
            raise ValueError("not an object with a list of files")
    except ValueError as exc:
        raise ForeignFolderError(f"the output marker {path} is damaged ({exc}); remove the folder by hand") from None
    return doc


def claim(folder, command: str, legacy=None) -> Path:
    """Make `folder` ours (create it, or adopt it when empty), or refuse a non-empty folder we did not write.

    `legacy(folder)` may recognise a folder an older d2it wrote without a marker (it is then adopted).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ForeignFolderError(f"{folder} is a file, not a folder")
    if folder.is_dir() and read_marker(folder) is not None:
        clean_temporary_files(folder)  # `.NAME.XXXX.tmp` files a killed run of ours left behind
        return folder
    if folder.is_dir():
        entries = _entries(folder)
        if entries and not (legacy and legacy(folder)):
            raise ForeignFolderError(
                f"{folder} is not empty and was not written by d2it (it holds {entries[0]!r}, no {MARKER}); "
                "choose a new or empty folder, nothing was changed"
            )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / MARKER, json.dumps({"command": command, "files": []}, indent=2) + "\n")
    return folder


def remove_recorded(folder):
    """Delete the files the marker lists (our previous outputs) and the folders they leave empty."""
    folder = Path(folder)
    doc = read_marker(folder)
    if doc is None:
        raise ForeignFolderError(f"{folder} has no {MARKER}; d2it only clears folders it wrote")
    for name in doc.get("files", []):
        try:
            path = checks.inside_tree(folder, name, f"{folder / MARKER} entry")
        except ConfigError as exc:
            raise ForeignFolderError(str(exc)) from None
        if path.is_file() or path.is_symlink():
            path.unlink()
            parent = path.parent
            while parent != folder and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    record(folder, [], command=doc.get("command", ""))


def record(folder, files, command: str = ""):
    """Write the marker listing `files` (paths inside `folder`) as our outputs."""
    folder = Path(folder)
    doc = read_marker(folder) or {}
    names = sorted({os.path.relpath(Path(f), folder) if Path(f).is_absolute() else str(f) for f in files})
    doc.update(command=command or doc.get("command", ""), files=names)
    atomic_write_text(folder / MARKER, json.dumps(doc, indent=2) + "\n")


def system_target(folder, *, overwrite: bool = False, update: bool = False) -> Path:
    """Check that a system directory may be written to `folder`, before any work: it is new, empty, or holds a
    system (replaced only with `overwrite`, or updated in place with `update`). A folder holding anything
    else is never written into, so a mistyped --out cannot mix weights into (or delete) a user's files.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ForeignFolderError(f"{folder} is a file, not a folder")
    entries = _entries(folder) if folder.is_dir() else []
    if not entries:
        return folder
    if not (folder / SYSTEM_RECORD).is_file():
        raise ForeignFolderError(
            f"{folder} is not empty and holds no d2it system (it holds {entries[0]!r}, no {SYSTEM_RECORD}); "
            "choose a new or empty folder, nothing was changed"
        )
    if not (overwrite or update):
        raise ForeignFolderError(f"{folder} already holds a system; pass --overwrite to replace it")
    return folder


def check_file_target(path, option: str = "--out"):
    """Refuse an output file path early: a folder in its place, or a file where one of its folders should be."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ForeignFolderError(f"{option} {path} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ForeignFolderError(f"{option} {path} cannot be written: {parent} is a file, not a folder")
            break
