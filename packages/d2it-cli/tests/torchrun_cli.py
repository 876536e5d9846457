"""Run by torchrun in test_cluster.py: several `d2it` command lines in one process each, separated by `--next`.

usage: torchrun ... torchrun_cli.py ARGS... [--next ARGS...]...
"""

import sys

import torch

from d2it import dist
from d2it_cli.main import load_registry, make_cli


def main(argv):
    torch.set_num_threads(1)
    cli = make_cli(load_registry())
    commands, current = [], []
    for arg in argv:
        if arg == "--next":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    for args in commands:
        cli.main(args=args, prog_name="d2it", obj={}, standalone_mode=False)
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
