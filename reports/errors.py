"""The reports' errors (the CLI maps each to one line and exit 2)."""


class ReportError(Exception):
    """A report or export cannot be made as asked: a config file that is missing, corrupt or from a newer
    hpo, an unknown space or parameter, a folder that does not exist. Nothing already stored is touched."""
