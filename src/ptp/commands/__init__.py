"""One module per `ptp` subcommand: HELP, configure(parser), run(args)."""
