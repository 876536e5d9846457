"""The click type of every `--system` / `--from`: a model directory or `hf://OWNER/NAME[@REVISION]`."""

import click


class SystemDir(click.ParamType):
    """A local model directory, or a Hub system resolved through the Hub's cache to its local snapshot.

    `writable` commands (train, encode, thresholds) write into the system, so they refuse a Hub
    system (its cached snapshot is read-only) and say how to make a local copy.
    """

    name = "DIR|hf://REPO"

    def __init__(self, writable: bool = False):
        self.writable = writable

    def convert(self, value, param, ctx):
        from d2it import hub  # the one resolver, shared with d2it.System.from_pretrained

        if not hub.is_hub(value):
            return value
        if self.writable:
            self.fail(
                f"{value} is a Hub system and this command writes into its directory; make a local copy first: "
                f"d2it build --from {value} --out DIR",
                param,
                ctx,
            )
        return str(hub.resolve_system(value))  # a D2itError (offline, unknown repo) exits 2 with one sentence


SYSTEM_DIR = SystemDir()
WRITABLE_SYSTEM_DIR = SystemDir(writable=True)
