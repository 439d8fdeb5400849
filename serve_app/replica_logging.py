"""The package's log lines in the replica's own log, as Serve writes its lines.

Serve configures one logger, ``ray.serve``, from the deployment's ``logging_config``
(level, TEXT or JSON, the replica's log file) and lets nothing reach it from other
loggers. The package's modules log under their own names (``serve_app.jobs.runner``...),
which inside a replica would reach only Python's last-resort handler: warnings and errors
as bare lines on stderr, without the replica's fields, and every INFO line dropped. Each
replica therefore hands the package's records to Serve's logger.
"""

from __future__ import annotations

import logging

SERVE_LOGGER = "ray.serve"
PACKAGE_LOGGER = "serve_app"


class _ToServe(logging.Handler):
    """Hands each record to Serve's logger as it is configured now: a new
    ``logging_config`` replaces that logger's handlers and level, never this."""

    def emit(self, record: logging.LogRecord) -> None:
        serve = logging.getLogger(SERVE_LOGGER)
        if serve.isEnabledFor(record.levelno):
            serve.handle(record)


def log_through_serve() -> None:
    """Called in each replica's constructor (once per process is enough; more is harmless)."""
    package = logging.getLogger(PACKAGE_LOGGER)
    if any(isinstance(handler, _ToServe) for handler in package.handlers):
        return
    package.addHandler(_ToServe())
    # Every record reaches the handler, which applies Serve's level (DEBUG lines are few).
    package.setLevel(logging.DEBUG)
    package.propagate = False
