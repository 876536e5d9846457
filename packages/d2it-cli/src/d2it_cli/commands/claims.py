"""Claiming an output folder for the running command: the ownership marker, and a lock held until the command ends."""

import click

from d2it_cli import outputs
from d2it_cli.locks import FolderLock, is_main_process


def claim_and_hold(folder, command: str, legacy=None, what: str = "output folder"):
    """On rank 0: `outputs.claim` the folder and lock it until the running click command ends."""
    if is_main_process():
        outputs.claim(folder, command, legacy)
        click.get_current_context().with_resource(FolderLock(folder, what))
