"""User-facing errors: the CLI prints their message in one sentence and exits with code 2."""

import os
from pathlib import Path


class D2itError(Exception):
    """An error a user can cause and fix (bad name, bad option, bad file)."""


class UnknownComponentError(D2itError, KeyError):
    """A component name that no installed plugin registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(D2itError):
    """Two plugins register the same (kind, name)."""


class ConfigError(D2itError, ValueError):
    """An option that does not exist or a value of the wrong type."""


class CheckpointError(D2itError):
    """A model directory or checkpoint that is missing, corrupt or does not match."""


class DataError(D2itError):
    """A dataset, image or cache that cannot be used."""


class PluginWarning(UserWarning):
    """A plugin distribution failed to load and was skipped."""


class WriteFailed(OSError):
    """A write of ours failed (e.g. ENOSPC); `filename` is the file it was to replace, which is intact."""

    def __init__(self, exc: OSError, path):
        reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)
        super().__init__(exc.errno, reason, os.fspath(path))
        self.existed = Path(path).exists()
