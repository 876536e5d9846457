"""`python -m d2it_cli` runs the `d2it` command."""

from d2it_cli.main import main

main()
