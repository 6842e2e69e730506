"""``python -m edgesmith.cli``: the command line, as the ``edgesmith`` script runs it."""

from edgesmith.cli import entry

entry()
