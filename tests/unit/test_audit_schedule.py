"""The sampled audit in beat's schedule: on at the configured rate, off at 0."""

from __future__ import annotations

from feedpipe import tasks
from feedpipe.beat import beat_schedule
from feedpipe.config import load_settings
from feedpipe.core.catalog import MAINTENANCE_QUEUE, TASK_QUEUES
from feedpipe.worker import TASK_MODULES


def test_the_sampled_audit_is_scheduled_only_when_a_rate_is_set() -> None:
    assert "audit-sample" not in beat_schedule(load_settings({}))
    entry = beat_schedule(load_settings({"FEEDPIPE_AUDIT_SAMPLE_PER_MINUTE": "30"}))["audit-sample"]
    assert entry["task"] == tasks.AUDIT_SAMPLE
    assert entry["schedule"] == 60.0
    assert entry["options"] == {"expires": 60.0} and TASK_QUEUES[entry["task"]] == MAINTENANCE_QUEUE
    assert "feedpipe.tasks.audit" in TASK_MODULES


def test_the_audit_settings_default_to_off_and_repairing() -> None:
    settings = load_settings({})
    assert settings.audit_sample_per_minute == 0
    assert settings.audit_repair is True
