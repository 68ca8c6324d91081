"""``python -m grouppruner``: the ``grouppruner`` command."""

from .cli import run

run()
