"""Run every benchmark in this folder (bench_*.py, each with `run(quick) -> dict`)."""

import argparse
import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def discover() -> list[str]:
    """Names of the benchmark modules, sorted."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. transformers")
    parser.add_argument("--quick", action="store_true", help="a short smoke run of each")
    args, extra = parser.parse_known_args(argv)
    sys.path.insert(0, str(HERE))
    wanted = [f"bench_{n}" if not n.startswith("bench_") else n for n in args.names] or discover()
    unknown = sorted(set(wanted) - set(discover()))
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; available: {', '.join(discover())}")
    if extra and len(wanted) != 1:
        parser.error(f"options {' '.join(extra)} need exactly one benchmark named")
    for name in wanted:
        print(f"\n## {name}\n", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(name)
        # a benchmark with options of its own takes the rest of the command line (e.g. paper --profile gpu)
        module.run(quick=args.quick, argv=extra) if extra else module.run(quick=args.quick)
        print(f"\n({name} took {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
