"""``feedpipe create-tables``: the app table exactly as the seed creates it, the lease table and
the dead-letter table.

Creating a table that exists is a no-op, so running it twice is harmless.
"""

from __future__ import annotations

import contextlib
from typing import Any

from feedpipe.core import keys

_GSI_NAMES = (keys.GSI1, keys.GSI2, keys.GSI3)
DEFAULT_DEAD_LETTER_TABLE = "feedpipe-dead-letters"  # the setting's default


def app_table_spec(name: str) -> dict[str, Any]:
    """The seed's ``createMainTable`` parameters (minus options CreateTable does not take)."""
    attributes = ["PK", "SK"] + [f"{g}{part}" for g in _GSI_NAMES for part in ("PK", "SK")]
    return {
        "TableName": name,
        "KeySchema": [
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in attributes],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": g,
                "KeySchema": [
                    {"AttributeName": f"{g}PK", "KeyType": "HASH"},
                    {"AttributeName": f"{g}SK", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for g in _GSI_NAMES
        ],
        "BillingMode": "PAY_PER_REQUEST",
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        "Tags": [
            {"Key": "Environment", "Value": "production"},
            {"Key": "Application", "Value": "social-media"},
        ],
    }


def lease_table_spec(name: str) -> dict[str, Any]:
    return {
        "TableName": name,
        "KeySchema": [{"AttributeName": "lease_key", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "lease_key", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
    }


def dead_letter_table_spec(name: str) -> dict[str, Any]:
    """One partition per store (``store``), letters sorted by time under it (``letter``)."""
    return {
        "TableName": name,
        "KeySchema": [
            {"AttributeName": "store", "KeyType": "HASH"},
            {"AttributeName": "letter", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": "store", "AttributeType": "S"},
            {"AttributeName": "letter", "AttributeType": "S"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_tables(
    client: Any, app_table: str, lease_table: str, dead_letter_table: str = DEFAULT_DEAD_LETTER_TABLE
) -> dict[str, str]:
    """Create the tables where missing; returns each table's outcome ('created' or 'exists')."""
    outcome = {}
    specs = (app_table_spec(app_table), lease_table_spec(lease_table), dead_letter_table_spec(dead_letter_table))
    for spec in specs:
        name = spec["TableName"]
        try:
            client.create_table(**spec)
            outcome[name] = "created"
        except client.exceptions.ResourceInUseException:
            outcome[name] = "exists"
            continue
        client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
    _enable_point_in_time_recovery(client, app_table)
    return outcome


def _enable_point_in_time_recovery(client: Any, name: str) -> None:
    # The seed asks for PITR in CreateTable; the API takes it as a separate call.
    # A local stand-in without backups is not worth failing create-tables for.
    with contextlib.suppress(client.exceptions.ClientError):
        client.update_continuous_backups(
            TableName=name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )
