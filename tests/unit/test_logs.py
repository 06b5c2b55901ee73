"""JSON logs carry the ids that let an operator follow one post from record to feeds."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from feedpipe.config import load_settings
from feedpipe.logs import JsonFormatter, setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_json_lines_carry_the_ids_passed_with_a_message(capsys) -> None:
    setup_logging(load_settings({"FEEDPIPE_LOG_FORMAT": "json"}))
    logging.getLogger("feedpipe.test").info("post_published from record %s", "e1",
                                            extra={"event_id": "e1", "post_id": "p1", "shard": "stream:s1"})

    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])

    assert line["message"] == "post_published from record e1"
    assert (line["event_id"], line["post_id"], line["shard"], line["level"]) == ("e1", "p1", "stream:s1", "INFO")


def test_a_traceback_stays_inside_its_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = JsonFormatter().format(record)

    assert "\n" not in line and "ValueError: boom" in json.loads(line)["traceback"]
