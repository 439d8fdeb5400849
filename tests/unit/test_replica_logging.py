"""The package's records reach Serve's logger as it is configured at the time."""

from __future__ import annotations

import logging

import pytest

from serve_app.replica_logging import PACKAGE_LOGGER, SERVE_LOGGER, log_through_serve


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def serve_logger():
    """Serve's logger as a replica has it (no propagation, its own handler), and the
    package's logger put back afterwards."""
    serve, package = logging.getLogger(SERVE_LOGGER), logging.getLogger(PACKAGE_LOGGER)
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in (serve, package)]
    kept = Kept()
    serve.handlers[:] = [kept]
    serve.setLevel(logging.INFO)
    serve.propagate = False
    yield kept
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def test_package_lines_go_to_serve_s_handlers_at_serve_s_level(serve_logger):
    log_through_serve()
    log_through_serve()  # a second replica class in the same process: still one handler
    runner = logging.getLogger("serve_app.jobs.runner")
    runner.info("job %s done", "abc")
    runner.debug("not at INFO")
    assert [r.getMessage() for r in serve_logger.records] == ["job abc done"]
    assert serve_logger.records[0].name == "serve_app.jobs.runner"

    # A new logging_config: Serve's handlers and level replaced; the package follows.
    later = Kept()
    logging.getLogger(SERVE_LOGGER).handlers[:] = [later]
    logging.getLogger(SERVE_LOGGER).setLevel(logging.DEBUG)
    runner.debug("now at DEBUG")
    assert [r.getMessage() for r in later.records] == ["now at DEBUG"]
    assert len(serve_logger.records) == 1
