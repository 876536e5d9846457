"""Claiming folders for the running command: an output folder's marker, and locks held until the command ends."""

import click

from d2it_cli import outputs
from d2it_cli.locks import FolderLock, is_main_process


def hold(folder, what: str = "output folder", shared: bool = False):
    """Lock `folder` on rank 0 (shared: as a reader) until the running click command finishes."""
    if not is_main_process():
        return None
    return click.get_current_context().with_resource(FolderLock(folder, what, shared=shared))


def claim_and_hold(folder, command: str, legacy=None, what: str = "output folder"):
    """On rank 0: `outputs.claim` the folder and lock it until the running click command ends."""
    if is_main_process():
        outputs.claim(folder, command, legacy)
        hold(folder, what)
