"""compress()'s progress told where Ultralytics tells its own (a private helper of :mod:`.flow`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["story"]


@contextmanager
def story(verbose: bool) -> Iterator[None]:
    """While compress() runs: its INFO log lines printed where Ultralytics prints its own, unless logging is set up.

    When the ``grouppruner`` logger would drop INFO records (no logging configured, as in a notebook), its records
    go to Ultralytics' logger instead (which prints them unless ``YOLO_VERBOSE=False``); ``verbose=False`` keeps
    them quiet, as it does Ultralytics' trainer.
    """
    ours = logging.getLogger("grouppruner")
    if not verbose or ours.isEnabledFor(logging.INFO):
        yield
        return
    from ultralytics.utils import LOGGER

    class _ToUltralytics(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            record = logging.makeLogRecord(
                {**record.__dict__, "msg": f"grouppruner: {record.getMessage()}", "args": ()}
            )
            LOGGER.handle(record)

    handler = _ToUltralytics()
    level, propagate = ours.level, ours.propagate
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
        ours.propagate = propagate
