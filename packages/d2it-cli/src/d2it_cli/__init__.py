"""d2it_cli."""
