"""The built-in `d2it` commands; each module defines one click command or group."""

from d2it_cli.commands.build import build
from d2it_cli.commands.plugins import plugins
from d2it_cli.commands.sample import sample

COMMANDS = [build, plugins]
from d2it_cli.commands.thresholds import thresholds; from d2it_cli.commands.train import train; from d2it_cli.commands.encode import encode; COMMANDS += [thresholds, train, encode]  # noqa: E402,E501,E702
COMMANDS.append(sample)
from d2it_cli.commands.evaluate import eval_group; COMMANDS.append(eval_group)  # noqa: E402,E702
from d2it_cli.commands.demo import demo; COMMANDS.append(demo)  # noqa: E402,E702
