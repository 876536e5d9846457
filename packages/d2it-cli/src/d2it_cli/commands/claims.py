"""Locks held until the running command ends (a reader's shared lock on a latent cache).

Output folders are claimed by the library writers themselves (`d2it_cli.outputs.claimed`).
"""

import click

from d2it_cli.locks import FolderLock, is_main_process


def hold(folder, what: str = "output folder", shared: bool = False):
    """Lock `folder` on rank 0 (shared: as a reader) until the running click command finishes."""
    if not is_main_process():
        return None
    lock = click.get_current_context().with_resource(FolderLock(folder, what, shared=shared))
    if lock.unlocked:
        click.echo(f"warning: reading {what} {folder} without a lock: {lock.unlocked}", err=True)
    return lock
