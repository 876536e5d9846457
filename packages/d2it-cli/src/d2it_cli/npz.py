"""Reading .npz archives safely: no pickles, and a renamed .npy or a damaged archive is a sentence."""

import zipfile
from pathlib import Path

import numpy as np

from d2it.errors import DataError


def load_npz(path) -> dict[str, np.ndarray]:
    """Every array of an .npz archive (loaded eagerly, `allow_pickle=False`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"array file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single .npy array, not an .npz archive (a renamed .npy file?)")
    try:
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path} is a damaged .npz file ({exc})") from None
