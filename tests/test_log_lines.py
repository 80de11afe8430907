"""The lines a worker writes per job (RUNNING, DONE) go straight to the framework's handlers when
nothing else would see them (core.log.info): the same text a log record makes, masked the same way;
and a handler, filter or level anyone adds is heeded from the next line."""
from __future__ import annotations

import io
import logging
import re

import pytest

from core.config import load_config
from core.log import WORKER_NAME_ENV, _direct, configure_logging, info

SECRET = "app-key-that-must-not-show"
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


class Output:
    """The root logger as a worker process has it: only the framework's handler, writing to a buffer."""

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch = monkeypatch
        self.buffer = io.StringIO()
        self.root = logging.getLogger()
        self.log = logging.getLogger("worker")

    def configure(self) -> None:
        configure_logging(load_config())
        for handler in self.root.handlers:
            if getattr(handler, "_framework", False):
                handler.setStream(self.buffer)
        self.alone()

    def alone(self) -> None:
        """Only the framework's handlers on the root: pytest adds its own as each test's call begins."""
        self.root.handlers = [h for h in self.root.handlers if getattr(h, "_framework", False)]

    def lines(self) -> list[str]:
        """The lines written since the last call, without their time (checked to be there)."""
        text, self.buffer = self.buffer.getvalue(), io.StringIO()
        for handler in self.root.handlers:
            if getattr(handler, "_framework", False):
                handler.setStream(self.buffer)
        assert all(STAMP.match(line) for line in text.splitlines()), text
        return [STAMP.sub("", line, count=1) for line in text.splitlines()]


@pytest.fixture
def output(monkeypatch):
    """configure_logging as a worker runs it, with APP_KEY set (a secret to mask); undone afterwards."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setenv("APP_KEY", SECRET)
    monkeypatch.setenv("LOG_FILE", "")
    out = Output(monkeypatch)
    out.configure()
    yield out
    out.log.filters.clear()
    out.log.setLevel(logging.NOTSET)


def test_a_line_written_directly_reads_as_the_logged_one(output):
    output.alone()
    message = f"RUNNING SendEmailJob [1f0c] attempt 1/3 {SECRET} 100%s"
    assert _direct(output.log), "the framework's handler alone: written directly"
    info(output.log, message)
    direct = output.lines()
    output.log.addFilter(lambda record: True)          # anyone's filter: the usual path, the same handler
    assert _direct(output.log) is None
    info(output.log, message)
    assert direct == output.lines() == ["RUNNING SendEmailJob [1f0c] attempt 1/3 *** 100%s"]


def test_a_worker_of_several_names_itself_on_both_paths(output, monkeypatch):
    monkeypatch.setenv(WORKER_NAME_ENV, "worker 2%")
    output.configure()
    info(output.log, "DONE    NoopJob [a1] 0.8ms")
    direct = output.lines()
    output.log.addFilter(lambda record: True)
    info(output.log, "DONE    NoopJob [a1] 0.8ms")
    assert direct == output.lines() == ["[worker 2%] DONE    NoopJob [a1] 0.8ms"]


def test_a_handler_someone_adds_gets_the_record(output):
    output.alone()
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    output.root.addHandler(Collect())
    info(output.log, "RUNNING NoopJob [b2] attempt 1/3")
    assert seen == ["RUNNING NoopJob [b2] attempt 1/3"]
    assert output.lines() == ["RUNNING NoopJob [b2] attempt 1/3"]     # and the framework's handler has it too


def test_a_level_above_info_silences_the_lines(output):
    output.alone()
    output.log.setLevel(logging.WARNING)
    info(output.log, "RUNNING NoopJob [c3] attempt 1/3")
    assert output.lines() == []
    output.log.setLevel(logging.NOTSET)
    output.root.handlers[0].setLevel(logging.WARNING)     # the framework's own handler
    info(output.log, "RUNNING NoopJob [c3] attempt 1/3")
    assert output.lines() == []
    output.root.handlers[0].setLevel(logging.NOTSET)
    info(output.log, "RUNNING NoopJob [c3] attempt 1/3")
    assert output.lines() == ["RUNNING NoopJob [c3] attempt 1/3"]
