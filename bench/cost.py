"""What a fan-out's capacity costs at DynamoDB's on-demand prices, against what it cannot cost less.

Prices: us-east-1, on-demand, since AWS halved on-demand throughput prices on 2024-11-01:
$0.625 per million write request units, $0.125 per million read request units
(https://aws.amazon.com/dynamodb/pricing/on-demand/; the figures as quoted by airbyte.com and
jusdb.com in 2025, read 2026-11-29: the AWS page's own table could not be read from here, so
they are this benchmark's stated assumption). A WCU and an RCU of the model are one request unit.

The floor per delivered item: its 2 WRU (the item on the table and on GSI1), plus its share of
the follower walk's reads, at the fewest units a walk can spend: every GSI1 follow item read
once, eventually consistent (half a unit per 4 KB).
"""

from __future__ import annotations

from typing import Any

from bench.dynamo_capacity import READ_UNIT_BYTES
from bench.figures import Figure
from feedpipe.core import keys

DOLLARS_PER_MILLION_WRU = 0.625
DOLLARS_PER_MILLION_RRU = 0.125
EVENTUAL_READ_FACTOR = 0.5
WCU_PER_ITEM = 2  # base table + GSI1


def dollars_per_million_items(wcu: float, rcu: float, items: int) -> float:
    """The capacity spent, priced, per million items delivered."""
    dollars = (wcu * DOLLARS_PER_MILLION_WRU + rcu * DOLLARS_PER_MILLION_RRU) / 1e6
    return dollars / max(1, items) * 1e6


def walk_read_floor(walk_bytes: int) -> float:
    """The fewest RCU a walk of ``walk_bytes`` of follow items can spend."""
    return walk_bytes / READ_UNIT_BYTES * EVENTUAL_READ_FACTOR


def floor_dollars_per_million_items(items: int, walk_bytes: int) -> float:
    return dollars_per_million_items(items * WCU_PER_ITEM, walk_read_floor(walk_bytes), items)


def walk_bytes(model: Any, table_name: str, author: str) -> int:
    """The bytes of ``author``'s follow items on GSI1, as the model charges a Query for them."""
    table = model.table(table_name)
    rows = table.index(keys.GSI1).rows.get(keys.user_pk(author), {})
    return sum(table.items[base][1] for row, base in rows.items() if row[0].startswith(keys.FOLLOWER_PREFIX))


def cost_figure(name: str, r: dict[str, Any]) -> Figure:
    """``r``: a run of ``bench.million.measure``, its capacity spent and its walk's bytes."""
    n, delivered = r["followers"], r["durable_items"]
    cost = dollars_per_million_items(r["wcu"], r["rcu"], delivered)
    floor = floor_dollars_per_million_items(n, r["walk_bytes"])
    return Figure(f"{name}, on-demand cost per million delivered items (vs floor)", round(cost, 4), "$",
                  "2 WRU an item + the walk's GSI1 bytes / 4 KB x 0.5 RRU", round(floor, 4), better="lower",
                  target="<= 1.1 x the floor", met=delivered == n and cost <= 1.1 * floor,
                  notes=f"us-east-1 on-demand (since 2024-11-01): ${DOLLARS_PER_MILLION_WRU} per million WRU, "
                        f"${DOLLARS_PER_MILLION_RRU} per million RRU; spent {r['wcu']:,.0f} WRU and "
                        f"{r['rcu']:,.0f} RRU (walk, settle re-checks, liveness reads), the walk's floor "
                        f"{walk_read_floor(r['walk_bytes']):,.0f} RRU ({r['walk_bytes'] / 1e6:,.1f} MB of follow "
                        "items)",
                  extra={"walk_bytes": r["walk_bytes"]})
