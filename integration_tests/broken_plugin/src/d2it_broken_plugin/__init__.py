"""A plugin whose import fails, to check that d2it only warns about it."""

raise ImportError("d2it-broken-plugin is broken on purpose")
