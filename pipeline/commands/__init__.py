"""One module per subcommand of `boomerang` (pipeline.cli parses the flags). The top layer: imports any other."""
