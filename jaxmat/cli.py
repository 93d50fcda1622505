"""Shared plumbing of the ``python -m jaxmat...`` commands: one parser style, one logging setup, and
user errors printed as one line (``error: ...``, exit status 2) instead of a traceback."""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from jaxmat.errors import ForceFieldError, JaxmatInputError

USER_ERRORS = (JaxmatInputError, FileNotFoundError, ForceFieldError)  # reported as one line (naming the input), not raised
QUIET_LOGGERS = ("absl", "matplotlib", "jax", "orbax")


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is the command module's docstring, layout kept."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped INFO logging for jaxmat, third-party chatter at WARNING."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def command(main):
    """Decorator for a command's ``main(argv) -> int``: a user error becomes ``error: MESSAGE`` on
    stderr and exit status 2; anything else (a bug) keeps its traceback."""

    @functools.wraps(main)
    def run(argv=None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run
