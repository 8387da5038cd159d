"""The command line (`hpo`): argparse, printing, progress display and exit codes; the only room that prints."""

from cifar_hpo.search.cli.main import main

__all__ = ["main"]
