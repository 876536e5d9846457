"""The built-in `d2it` commands; each module defines one click command or group."""

from d2it_cli.commands.build import build
from d2it_cli.commands.demo import demo
from d2it_cli.commands.encode import encode
from d2it_cli.commands.evaluate import eval_group
from d2it_cli.commands.export import export
from d2it_cli.commands.interop import import_group, push
from d2it_cli.commands.pack import pack
from d2it_cli.commands.plugins import plugins
from d2it_cli.commands.sample import sample
from d2it_cli.commands.thresholds import thresholds
from d2it_cli.commands.train import train

# in the order of the workflow; `d2it --help` lists them alphabetically
COMMANDS = [build, plugins, pack, thresholds, train, encode, sample, export, eval_group, demo, import_group, push]
