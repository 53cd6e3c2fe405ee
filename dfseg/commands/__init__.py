"""One module per ``dfseg`` sub-command: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``."""
