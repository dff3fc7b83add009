"""One module per ``cdmo`` verb; the registry is ``cdmo.cli.COMMANDS``."""
