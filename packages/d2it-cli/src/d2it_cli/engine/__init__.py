"""The training engine shared by every `d2it train` command."""
