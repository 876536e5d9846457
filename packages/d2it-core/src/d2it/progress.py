"""Progress bars: shown only when asked for and stdout is a terminal (the one place that checks)."""

import sys

from tqdm.auto import tqdm


def on_terminal(enabled: bool = True) -> bool:
    """True when progress output is wanted (`enabled`) and stdout is a terminal."""
    return bool(enabled) and sys.stdout.isatty()


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar (over `iterable`, or counting to `total=`), hidden unless `on_terminal(enabled)`."""
    return tqdm(iterable, disable=not on_terminal(enabled), **kwargs)
