"""Output folders: one rule for every folder d2it writes (systems, exports, shards, caches, samples, runs).

A writer `claimed` a folder before it writes: a new or empty folder becomes ours, one holding our
marker `.d2it-output.json` stays ours, anything else is refused with one sentence and left exactly
as it was. The marker lists, relative to the folder, every file we wrote there (and the subfolders
we handed to a nested writer), so a rerun replaces exactly those files wherever it is run from.
Every file goes through `Output.path`, which never writes through a symbolic link, never writes
over a file we did not write and records the name. A user's file in our folder is never written,
replaced or removed; a claim that is refused, or a run that fails before writing anything, leaves
no marker, lock or folder behind.
"""

import errno
import json
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from d2it import dist
from d2it.errors import D2itError
from d2it.io import atomic_write_text
from d2it.system import RECORD_FILE as SYSTEM_RECORD
from d2it.system import WEIGHT_SLOTS
from d2it_cli.locks import LOCK_NAME, FolderLock, is_main_process

MARKER = ".d2it-output.json"
SYSTEM = "system"  # the kind of a system directory's claim (build, import, export)
SYSTEM_EXISTS = "{folder} already holds a system; pass --overwrite to replace it"
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # `d2it.io.atomic_path`'s temporaries
_SAVE_EVERY = 256  # names recorded between marker saves, so a killed run's files are still known


class ForeignFolderError(D2itError):
    """A folder (or a file in one) that d2it did not write, or a link it will not write through."""


def _entries(folder: Path, ours: bool = True) -> list[str]:
    """The names in `folder` besides our marker and lock (and, in a folder of `ours`, our temporaries)."""
    names = (p.name for p in folder.iterdir())
    return sorted(n for n in names if n not in (MARKER, LOCK_NAME) and not (ours and _TEMPORARY.match(n)))


def _relative(name, where: str) -> str:
    """`name` as a normalised relative path inside a folder, refused when it could leave it."""
    parts = PurePosixPath(str(name)).parts if isinstance(name, str) and name and "\x00" not in name else ()
    if not parts or parts[0] == "/" or any(p in (".", "..") for p in parts):
        raise ForeignFolderError(f"{where} {name!r} points outside its folder")
    return "/".join(parts)


def _link(path) -> ForeignFolderError:
    return ForeignFolderError(
        f"{path} is a symbolic link; d2it does not write through links, remove it or choose another folder"
    )


def read_marker(folder) -> dict | None:
    """The marker of an output folder, or None when there is none."""
    path = Path(folder) / MARKER
    if not os.path.lexists(path):
        return None
    if path.is_symlink():
        raise _link(path)
    if not path.is_file():
        raise ForeignFolderError(f"the output marker {path} is not a plain file; remove it or choose another folder")
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k, []), list) for k in ("files", "folders")):
            raise ValueError("not an object with a list of files")
    except ValueError as exc:
        raise ForeignFolderError(f"the output marker {path} is damaged ({exc}); remove the folder by hand") from None
    return doc


def system_files(folder: Path):
    """(files, folders) of a system directory written without a marker: d2it.json and its parts; else None."""
    record = folder / SYSTEM_RECORD
    if not record.is_file() or record.is_symlink():
        return None
    try:
        doc = json.loads(record.read_text())
    except (ValueError, OSError):
        return None
    if not isinstance(doc, dict) or "system" not in doc:
        return None
    parts = [f"{stem}.safetensors" for stem in WEIGHT_SLOTS if (folder / f"{stem}.safetensors").is_file()]
    return [SYSTEM_RECORD, *parts], []


def run_files(folder: Path):
    """(files, folders) of a training run directory written without a marker (train.json, log, checkpoints)."""
    config = folder / "train.json"
    if not config.is_file() or config.is_symlink() or not (folder / "checkpoints").is_dir():
        return None
    try:
        doc = json.loads(config.read_text())
    except (ValueError, OSError):
        return None
    if not isinstance(doc, dict) or "task" not in doc:
        return None
    files = [n for n in ("train.json", "log.jsonl") if (folder / n).is_file()]
    return files, [n for n in ("checkpoints", "samples") if (folder / n).is_dir()]


class Output:
    """A claimed folder: checked paths for every file written into it, and the marker that lists them."""

    def __init__(self, folder, kind: str, *, recorded=(), folders=(), mode: str = "replace", active: bool = True):
        self.shown = Path(folder)  # as the user wrote it, for messages and returned paths
        self.folder = Path(os.path.abspath(folder))  # so recorded names do not depend on the working directory
        self.kind, self.mode, self.active = kind, mode, active
        self.recorded, self.folders = set(recorded), set(folders)  # ours from earlier runs
        self.written: set[str] = set()
        self.handed: set[str] = set()  # subfolders given to a nested writer in this run
        self.made: list[Path] = []  # folders this run made inside, outermost first
        self._unsaved = 0

    def __fspath__(self) -> str:
        return os.fspath(self.shown)

    def _walk(self, rel: str, create: bool) -> Path | None:
        """folder/rel after checking that each folder on the way is a real folder inside (made when `create`)."""
        current = self.folder
        for part in rel.split("/")[:-1]:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(current)
                    self.made.append(current)
                except FileExistsError:
                    pass
                mode = os.lstat(current).st_mode
            if stat.S_ISLNK(mode):
                raise _link(self._show(current))
            if not stat.S_ISDIR(mode):
                raise ForeignFolderError(f"{self._show(current)} is a file, not a folder; nothing was written there")
        return current / rel.split("/")[-1]

    def _show(self, path: Path) -> Path:
        return self.shown / path.relative_to(self.folder)

    def ours(self, rel: str, folder: bool = False) -> bool:
        """True for a file or subfolder this run or an earlier one of ours wrote (or anything under such a subfolder);
        with `folder`, also a folder that holds files of ours."""
        if rel in self.recorded or rel in self.written or rel in self.folders or rel in self.handed:
            return True
        if any(rel.startswith(f"{f}/") for f in (*self.folders, *self.handed)):
            return True
        return folder and any(r.startswith(f"{rel}/") for r in (*self.recorded, *self.written))

    def path(self, name, *, folder: bool = False) -> Path:
        """The path of `name` (relative to the folder) ready to be written and recorded as ours.

        Its folders are made inside the output folder; a symbolic link on the way or in its place, or a
        file there that d2it did not write, is refused. `folder=True` makes a subfolder for a nested writer.
        """
        rel = _relative(name, "output path")
        target = self._walk(rel, create=True)
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if stat.S_ISLNK(mode):
                raise _link(self._show(target))
            if folder != stat.S_ISDIR(mode):
                kind = "a folder" if stat.S_ISDIR(mode) else "a file"
                raise ForeignFolderError(f"{self._show(target)} is {kind} that d2it did not write; move it away")
            if self.active and not self.ours(rel, folder):
                raise ForeignFolderError(
                    f"{self._show(target)} was not written by d2it; move it away or choose another folder, "
                    "d2it never replaces a file it did not write"
                )
        if folder:
            if mode is None:
                os.mkdir(target)
                self.made.append(target)
            if self.active:
                self.handed.add(rel)
        elif self.active:
            self.written.add(rel)
        if self.active:
            self._unsaved += 1
            if self._unsaved >= _SAVE_EVERY:
                self.save()
        return self.shown / rel

    def record(self, name) -> Path:
        """Record a file another process of this run wrote (e.g. another rank's shard)."""
        rel = _relative(name, "output path")
        self._walk(rel, create=False)
        if self.active:
            self.written.add(rel)
        return self.shown / rel

    def append(self, name):
        """`name` opened for appending text, never through a symbolic link."""
        path = self.path(name)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _link(path) from None
            raise
        return os.fdopen(fd, "a")

    def remove(self, name):
        """Delete one of our files now (and the folders it leaves empty); never a link, never a user's file."""
        rel = _relative(name, "output path")
        if self.active and not (rel in self.recorded or rel in self.written):
            return
        self.recorded.discard(rel)
        self.written.discard(rel)
        self._unlink(rel)

    def remove_under(self, prefix: str):
        """Delete every file of ours under the subfolder `prefix`."""
        for rel in sorted(r for r in self.recorded | self.written if r.startswith(f"{prefix}/")):
            self.remove(rel)

    def _unlink(self, rel: str):
        target = self._walk(rel, create=False)
        if target is None:
            return
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISREG(mode):
            return  # a link or folder someone put in its place is theirs now
        target.unlink()
        parent = target.parent
        while parent != self.folder:
            try:
                parent.rmdir()  # only when empty: a user's file keeps its folder
            except OSError:
                break
            parent = parent.parent

    def wrote_anything(self) -> bool:
        """True when a file recorded by this run exists."""
        return any(os.path.lexists(self.folder / rel) for rel in self.written)

    def save(self):
        """Write the marker listing every file of ours (earlier runs' and this run's so far)."""
        if self.active:
            self._write(self.recorded | self.written, self.folders | self.handed)

    def commit(self):
        """End the run: in `replace` mode delete the earlier run's files this run did not rewrite; write the marker."""
        if not self.active:
            return
        if self.mode == "replace":
            for rel in sorted(self.recorded - self.written):
                self._unlink(rel)
            self.recorded = set()
        files = {r for r in self.recorded | self.written if os.path.lexists(self.folder / r)}
        folders = {f for f in self.folders | self.handed if os.path.isdir(self.folder / f)}
        self.recorded, self.folders, self.written, self.handed = files, folders, set(), set()
        self._write(files, folders)

    def _write(self, files, folders):
        doc = {"command": self.kind, "files": sorted(files)}
        if folders:
            doc["folders"] = sorted(folders)
        atomic_write_text(self.folder / MARKER, json.dumps(doc, indent=2) + "\n")
        self._unsaved = 0

    def undo(self):
        """Take back the folders this run made inside that are still empty (after a failure)."""
        for path in reversed(self.made):
            try:
                path.rmdir()
            except OSError:
                pass


def _inspect(folder: Path, shown: Path, kind: str, *, overwrite, exists, legacy) -> tuple[bool, list, list]:
    """(marker present, recorded files, recorded folders) of a folder we may write; refuse any other folder.

    Read-only: a refusal here changes nothing.
    """
    if os.path.lexists(folder) and not folder.is_dir():
        raise ForeignFolderError(f"{shown} is a file, not a folder")
    if not folder.is_dir():
        parent = next(p for p in folder.parents if os.path.lexists(p))
        if not parent.is_dir():
            raise ForeignFolderError(f"{shown} cannot be made: {parent} is a file, not a folder")
        return False, [], []
    doc = read_marker(folder)
    entries = _entries(folder, ours=doc is not None)
    if doc is not None:
        if doc.get("command", kind) != kind:
            raise ForeignFolderError(
                f"{shown} holds the output of `d2it {doc['command']}`, not of `d2it {kind}`; choose another folder, "
                "nothing was changed"
            )
        files, folders = doc.get("files", []), doc.get("folders", [])
    elif not entries:
        files, folders = [], []
    elif legacy is not None and (found := legacy(folder)) is not None:
        files, folders = found
    elif kind == SYSTEM:
        raise ForeignFolderError(
            f"{shown} is not empty and holds no d2it system (it holds {entries[0]!r}, no {SYSTEM_RECORD}); "
            "choose a new or empty folder, nothing was changed"
        )
    else:
        raise ForeignFolderError(
            f"{shown} is not empty and was not written by d2it (it holds {entries[0]!r}, no {MARKER}); "
            "choose a new or empty folder, nothing was changed"
        )
    files = [_relative(f, f"{shown / MARKER} entry") for f in files]
    folders = [_relative(f, f"{shown / MARKER} entry") for f in folders]
    probe = Output(shown, kind, recorded=files, folders=folders)
    present = []
    for rel in [*files, *folders]:
        target = probe._walk(rel, create=False)  # refuses a link on the way
        if target is not None and os.path.islink(target):
            raise _link(shown / rel)
        if target is not None and os.path.lexists(target):
            present.append(rel)
    if overwrite is False:
        if present:
            sentence = exists or "{folder} holds the output of an earlier `d2it {kind}`; pass --overwrite to replace it"
            raise ForeignFolderError(sentence.format(folder=shown, kind=kind))
        tops = {rel.split("/")[0] for rel in [*files, *folders]}
        foreign = [e for e in entries if e not in tops]
        if foreign:
            raise ForeignFolderError(
                f"{shown} holds {foreign[0]!r}, which d2it did not write; pass --overwrite to write beside it "
                "(d2it replaces only its own files) or choose another folder"
            )
    return doc is not None, files, folders


def _make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; the ones made, outermost first."""
    missing = []
    current = folder
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    made = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        made.append(path)
    return made


def _remove_folders(made: list[Path]):
    for path in reversed(made):
        try:
            path.rmdir()
        except OSError:
            break


def _clean_temporaries(folder: Path):
    """Remove the hidden temporaries a killed run of ours left beside its files."""
    for p in folder.iterdir():
        if _TEMPORARY.match(p.name) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
            except FileNotFoundError:  # another cleaner was first
                pass


@contextmanager
def claimed(
    folder, kind: str, *, overwrite=None, mode: str = "replace", exists=None, legacy=None, what="output folder"
):
    """Claim `folder` for a writer of `kind` and hold its lock; yields the `Output` every file goes through.

    overwrite: None for a command that reruns into its own folder; False refuses a folder that holds
        anything (`exists` is the sentence, with {folder}), True replaces our files beside a user's.
    mode: "replace" (a rerun's files replace the earlier run's) or "append" (earlier files are kept).
    legacy(folder) -> (files, folders) | None recognises an output an older d2it wrote without a marker.
    On success the marker lists what was written; a failure before anything was written leaves nothing.
    Given an `Output`, yields it (a nested call in the same writer); on other ranks yields an unrecorded one.
    """
    if isinstance(folder, Output):
        yield folder
        return
    if not (is_main_process() and dist.is_main()):  # torchrun's RANK before the process group, its rank after
        yield Output(folder, kind, mode=mode, active=False)
        return
    shown, path = Path(folder), Path(os.path.abspath(folder))
    checks = dict(overwrite=overwrite, exists=exists, legacy=legacy)
    _inspect(path, shown, kind, **checks)  # refuse before creating anything
    made = _make_folders(path)
    lock = FolderLock(path, what)
    fresh = False
    try:
        lock.acquire()
        had_marker, files, folders = _inspect(path, shown, kind, **checks)  # again, now that no one else writes
        out = Output(shown, kind, recorded=files, folders=folders, mode=mode)
        if had_marker:
            _clean_temporaries(path)
        else:
            out.save()
            fresh = True
    except BaseException:
        if fresh:
            (path / MARKER).unlink(missing_ok=True)
        lock.release(remove=True)
        _remove_folders(made)
        raise
    try:
        yield out
    except BaseException:
        out.undo()
        if out.wrote_anything() or (fresh and _entries(path)):  # a nested writer's files keep their folder ours
            out.save()
        elif fresh:
            (path / MARKER).unlink(missing_ok=True)
            lock.release(remove=True)
            _remove_folders(made)
        raise
    else:
        out.commit()
    finally:
        lock.release()


def claim(folder, kind: str, **policy) -> Path:
    """Claim `folder` for `kind` and write its marker now (no lock kept); its path. For tests and notebooks."""
    with claimed(folder, kind, **policy):
        pass
    return Path(folder)


def system_target(folder, *, overwrite: bool = False, update: bool = False) -> Path:
    """Check, before any work, that a system directory may be written to `folder`: it is new, empty, or holds a
    system (replaced only with `overwrite`, updated in place with `update`). A folder holding anything else is
    never written into, so a mistyped --out cannot mix weights into (or delete) a user's files.
    """
    shown = Path(folder)
    policy = dict(overwrite=None if update else overwrite, exists=SYSTEM_EXISTS, legacy=system_files)
    _inspect(Path(os.path.abspath(folder)), shown, SYSTEM, **policy)
    return shown


def save_system(system, folder, *, overwrite: bool = False, update: bool = False, extra=None, registry=None):
    """`d2it.system.save` through a claim: d2it.json and the parts, replacing only the files of the system there."""
    from d2it import system as systems

    policy = dict(overwrite=None if update else overwrite, exists=SYSTEM_EXISTS, legacy=system_files)
    with claimed(folder, SYSTEM, mode="append" if update else "replace", what="system directory", **policy) as out:
        for stem in system.weight_modules():
            out.path(f"{stem}.safetensors")
        out.path(SYSTEM_RECORD)
        systems.save(system, out.shown, extra=extra, registry=registry)


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
