"""The arithmetic behind the million model's cost and fleet figures (``bench.cost``,
``bench.worker_rate``)."""

from __future__ import annotations

import math

import pytest

from bench import cost
from bench._fanout_util import AUTHOR, TABLE, follow_items, follower_ids, put_post
from bench._worker_util import ModelLoader
from bench.dynamo_capacity import READ_UNIT_BYTES
from bench.dynamo_model import DynamoModel
from bench.dynamo_query import item_size
from bench.worker_rate import WCU_PER_ITEM, fleet_for
from feedpipe.adapters.tables import app_table_spec


def test_spending_exactly_the_floor_costs_the_floor():
    items, walked = 1000, 300_000
    spent = cost.dollars_per_million_items(items * cost.WCU_PER_ITEM, cost.walk_read_floor(walked), items)
    assert spent == pytest.approx(cost.floor_dollars_per_million_items(items, walked))


def test_a_million_items_cost_their_request_units_at_the_stated_prices():
    spent = cost.dollars_per_million_items(wcu=2_000_000, rcu=1_000_000, items=1_000_000)
    assert spent == pytest.approx(2 * cost.DOLLARS_PER_MILLION_WRU + cost.DOLLARS_PER_MILLION_RRU)


def test_the_walk_floor_is_half_a_read_unit_per_4_kb():
    assert cost.walk_read_floor(READ_UNIT_BYTES) == pytest.approx(0.5)
    assert cost.walk_read_floor(10 * READ_UNIT_BYTES) == pytest.approx(10 * cost.walk_read_floor(READ_UNIT_BYTES))


def test_the_walk_bytes_are_the_authors_follow_items_only():
    model = DynamoModel(latency={})
    model.create_table(app_table_spec(TABLE))
    edges = list(follow_items(follower_ids(50), AUTHOR))
    model.load(TABLE, edges)
    model.load(TABLE, follow_items(follower_ids(7), "someone else"))
    put_post(ModelLoader(model), AUTHOR)  # on the author's GSI1 partition too
    assert cost.walk_bytes(model, TABLE, AUTHOR) == sum(item_size(e) for e in edges)


def test_the_fleet_grows_with_the_time_an_item_takes():
    processes, cores = fleet_for(40_000, seconds_per_item=0.001, cpu_per_item=0.0001)
    items_per_second = 40_000 / WCU_PER_ITEM
    assert processes == math.ceil(items_per_second * 0.001)
    assert fleet_for(40_000, 0.002, 0.0001)[0] == 2 * processes
    assert cores <= processes
    assert fleet_for(4_000, 0.001, 0.0001)[0] == math.ceil(processes / 10)
