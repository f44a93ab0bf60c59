"""CLI subcommands, one module per area; each module has ``add_parsers(subparsers)``."""

COMMAND_MODULES = ("vrtk.commands.core", "vrtk.commands.train", "vrtk.commands.codec", "vrtk.commands.evaluate",
                   "vrtk.commands.demo", "vrtk.commands.export")
