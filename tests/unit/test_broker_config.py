"""What Celery is told about each kind of broker (no broker needed: the config is data)."""

from __future__ import annotations

from feedpipe.adapters.celery_app import celery_config
from feedpipe.config import load_settings
from feedpipe.core.catalog import QUEUES


def _config(broker: str) -> dict:
    return celery_config(load_settings({"FEEDPIPE_REDIS_URL": "redis://cache:6379/0", "FEEDPIPE_BROKER_URL": broker}))


def test_on_rabbitmq_every_queue_is_a_durable_quorum_queue_and_publishes_are_confirmed() -> None:
    config = _config("amqp://feedpipe:secret@mq:5672/feedpipe")
    queues = config["task_queues"]
    assert [q.name for q in queues] == list(QUEUES)
    for queue in queues:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.durable and not queue.auto_delete and not queue.exclusive
        # a topic exchange: Celery delays a retry's countdown in the broker only from one
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (queue.name, "topic", queue.name)
    assert config["broker_transport_options"] == {"confirm_publish": True}
    assert config["worker_detect_quorum_queues"] is True
    assert config["broker_native_delayed_delivery_queue_type"] == "quorum"
    assert (config["task_serializer"], config["accept_content"]) == ("json", ["json"])
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1


def test_on_redis_the_queues_stay_plain_lists_with_a_visibility_timeout() -> None:
    config = _config("redis://mq:6379/0")
    assert all(not q.queue_arguments for q in config["task_queues"])
    options = config["broker_transport_options"]
    assert options["global_keyprefix"] == "feedpipe:broker:" and options["visibility_timeout"] > 0
    assert "worker_detect_quorum_queues" not in config
