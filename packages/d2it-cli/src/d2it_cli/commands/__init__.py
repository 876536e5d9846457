"""The built-in `d2it` commands; each module defines one click command or group."""

from d2it_cli.commands.build import build
from d2it_cli.commands.plugins import plugins

COMMANDS = [build, plugins]
