"""`python -m benchmarks [names] [--quick]` runs the benchmarks."""

from benchmarks.run import main

main()
