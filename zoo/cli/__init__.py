"""The ``zoo`` command line: one file per subcommand."""
