"""``python -m blaze``: the command line (as the ``blaze`` console script)."""

from blaze.cli import entry

entry()
