"""The operations the DynamoDB model serves: each takes the request's parameters and returns
the response body, or raises ``ModelError`` (``bench.dynamo_model`` turns it into a 400).

Throttling as DynamoDB does it: a single-item call raises
ProvisionedThroughputExceededException; a batch returns what it could not do in
``UnprocessedItems`` / ``UnprocessedKeys`` (the same request shapes), and raises only when it
could do nothing at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.dynamo_capacity import read_units, write_units
from bench.dynamo_query import QUERY_PAGE_BYTES, ModelError, Query, item_size, key_of, parse_conditions, project

if TYPE_CHECKING:
    from bench.dynamo_model import DynamoModel, Table
    from bench.dynamo_query import Index

_UNMODELLED = ("ConditionExpression", "FilterExpression", "Expected", "QueryFilter", "KeyConditions",
               "AttributesToGet", "Select", "ScanFilter")
GSI_CONSISTENT = "Consistent reads are not supported on global secondary indexes"


def _refuse_unmodelled(params: dict[str, Any]) -> None:
    for name in _UNMODELLED:
        if name in params and not (name == "Select" and params[name] == "ALL_ATTRIBUTES"):
            raise ModelError("ValidationException", f"{name} is not modelled")


def _throttled(table: Table, what: str, reason: str) -> ModelError:
    table.capacity.usage.throttled[f"{what}:{reason}"] += 1
    return ModelError("ProvisionedThroughputExceededException",
                      "Throughput exceeds the current capacity of your table or index.")


def create_table(model: DynamoModel, params: dict[str, Any]) -> dict[str, Any]:
    return {"TableDescription": _describe(model.create_table(params))}


def describe_table(model: DynamoModel, params: dict[str, Any]) -> dict[str, Any]:
    return {"Table": _describe(model.table(params["TableName"]))}


def _describe(table: Table) -> dict[str, Any]:
    spec = {k: v for k, v in table.spec.items() if k in ("TableName", "KeySchema", "AttributeDefinitions")}
    return {**spec, "TableStatus": "ACTIVE", "ItemCount": len(table.items)}


def update_continuous_backups(model: DynamoModel, params: dict[str, Any]) -> dict[str, Any]:
    model.table(params["TableName"])
    return {"ContinuousBackupsDescription": {"ContinuousBackupsStatus": "ENABLED"}}


def get_item(model: DynamoModel, params: dict[str, Any]) -> dict[str, Any]:
    _refuse_unmodelled(params)
    table = model.table(params["TableName"])
    base_key = table.key(params["Key"])
    if table.capacity.read_refused("", base_key[0]):
        raise _throttled(table, "GetItem", table.capacity.read_refused("", base_key[0]) or "")
    found = table.get(base_key)
    consistent = bool(params.get("ConsistentRead"))
    table.capacity.charge_read("", base_key[0], read_units(found[1] if found else 0, consistent))
    if found is None:
        return {}
    item = project(json.loads(found[0]), params.get("ProjectionExpression"), params.get("ExpressionAttributeNames", {}))
    return {"Item": item, "_bytes": found[1]}


def put_item(model: DynamoModel, params: dict[str, Any]) -> dict[str, Any]:
    _refuse_unmodelled(params)
    table = model.table(params["TableName"])
    if not _apply_write(table, {"PutRequest": {"Item": params["Item"]}}):
        raise _throttled(table, "PutItem", "capacity")
    return {}


def delete_item(model: DynamoModel, params: dict[str, Any]) -> dict[str, Any]:
    _refuse_unmodelled(params)
    table = model.table(params["TableName"])
    if not _apply_write(table, {"DeleteRequest": {"Key": params["Key"]}}):
        raise _throttled(table, "DeleteItem", "capacity")
    return {}


def _apply_write(table: Table, request: dict[str, Any]) -> bool:
    """Spend the write's capacity and apply it; False when throttled (nothing done)."""
    if "PutRequest" in request:
        item = request["PutRequest"]["Item"]
        table.key({a: item[a] for a in table.base.attrs if a in item})
        size = item_size(item)
        refused = table.capacity.try_write(table.write_parts(item, write_units(size)))
        if refused is None:
            table.put(item, json.dumps(item, separators=(",", ":")), size)
        else:
            table.capacity.usage.throttled[f"write item:{refused}"] += 1
        return refused is None
    base_key = table.key(request["DeleteRequest"]["Key"])
    old = table.get(base_key)
    old_item = json.loads(old[0]) if old else request["DeleteRequest"]["Key"]
    refused = table.capacity.try_write(table.write_parts(old_item, write_units(old[1] if old else 0)))
    if refused is None:
        table.delete(base_key)
    else:
        table.capacity.usage.throttled[f"write item:{refused}"] += 1
    return refused is None


def batch_write_item(model: DynamoModel, params: dict[str, Any]) -> dict[str, Any]:
    requests = [(model.table(name), r) for name, rs in params["RequestItems"].items() for r in rs]
    if not requests or len(requests) > 25:
        raise ModelError("ValidationException", "Too many items requested for the BatchWriteItem call"
                         if requests else "The batch write request list for a table cannot be null or empty")
    seen = set()
    for table, request in requests:
        key = request.get("DeleteRequest", {}).get("Key") or request["PutRequest"]["Item"]
        seen.add((table.name, table.key({a: key[a] for a in table.base.attrs if a in key})))
    if len(seen) != len(requests):
        raise ModelError("ValidationException", "Provided list of item keys contains duplicates")
    unprocessed: dict[str, list[dict[str, Any]]] = {}
    for table, request in requests:
        if not _apply_write(table, request):
            unprocessed.setdefault(table.name, []).append(request)
    if sum(map(len, unprocessed.values())) == len(requests):
        raise _throttled(requests[0][0], "BatchWriteItem", "all items")
    return {"UnprocessedItems": unprocessed}


def batch_get_item(model: DynamoModel, params: dict[str, Any]) -> dict[str, Any]:
    asked = params["RequestItems"]
    if sum(len(r["Keys"]) for r in asked.values()) > 100:
        raise ModelError("ValidationException", "Too many items requested for the BatchGetItem call")
    responses: dict[str, list[dict[str, Any]]] = {}
    unprocessed: dict[str, dict[str, Any]] = {}
    read = 0
    for name, request in asked.items():
        _refuse_unmodelled(request)
        table = model.table(name)
        found = responses.setdefault(name, [])
        for key in request["Keys"]:
            base_key = table.key(key)
            if table.capacity.read_refused("", base_key[0]):
                table.capacity.usage.throttled["read item:capacity"] += 1
                unprocessed.setdefault(name, {**request, "Keys": []})["Keys"].append(key)
                continue
            hit = table.get(base_key)
            units = read_units(hit[1] if hit else 0, bool(request.get("ConsistentRead")))
            table.capacity.charge_read("", base_key[0], units)
            if hit is not None:
                read += hit[1]
                found.append(project(json.loads(hit[0]), request.get("ProjectionExpression"),
                                     request.get("ExpressionAttributeNames", {})))
    if unprocessed and not any(responses.values()) and \
            sum(len(u["Keys"]) for u in unprocessed.values()) == sum(len(r["Keys"]) for r in asked.values()):
        raise _throttled(model.table(next(iter(asked))), "BatchGetItem", "all keys")
    return {"Responses": responses, "UnprocessedKeys": unprocessed, "_bytes": read}


def query(model: DynamoModel, params: dict[str, Any]) -> dict[str, Any]:
    _refuse_unmodelled(params)
    table = model.table(params["TableName"])
    index = table.index(params.get("IndexName"))
    consistent = bool(params.get("ConsistentRead"))
    if consistent and index.name:
        raise ModelError("ValidationException", GSI_CONSISTENT)
    names = params.get("ExpressionAttributeNames", {})
    conditions = parse_conditions(params["KeyConditionExpression"], names, params.get("ExpressionAttributeValues", {}))
    on_hash = [c for c in conditions if c.attr == index.hash_attr and c.op == "="]
    on_range = [c for c in conditions if c.attr == index.range_attr]
    if len(on_hash) != 1 or len(on_range) + 1 != len(conditions):
        raise ModelError("ValidationException", "Query condition missed key schema element")
    partition = on_hash[0].values[0]
    refused = table.capacity.read_refused(index.name, partition)
    if refused:
        raise _throttled(table, "Query", refused)
    start = params.get("ExclusiveStartKey")
    page = Query(index, partition, on_range[0] if on_range else None, params.get("ScanIndexForward", True),
                 None if start is None else _start_row(table, index, start))
    return _read_page(table, index, page, params, consistent)


def _start_row(table: Table, index: Index, start: dict[str, Any]) -> tuple[str, str, str]:
    base = key_of(table.base, start)
    return (key_of(index, start)[1] if index.name else base[1], *base)


def _read_page(table: Table, index: Index, page: Query, params: dict[str, Any], consistent: bool) -> dict[str, Any]:
    limit = params.get("Limit")
    items: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (projected, whole)
    size = 0
    last: dict[str, Any] | None = None
    for row in page.rows():
        encoded, item_bytes = table.items[(row[1], row[2])]
        if size + item_bytes > QUERY_PAGE_BYTES and items:
            last = _key_attrs(table, index, items[-1][1])
            break
        item = json.loads(encoded)
        items.append((project(item, params.get("ProjectionExpression"), params.get("ExpressionAttributeNames", {})),
                      item))
        size += item_bytes
        if limit and len(items) == limit:  # DynamoDB returns a key here even after the last item
            last = _key_attrs(table, index, item)
            break
    units = read_units(size, consistent)
    table.capacity.charge_read(index.name, page.partition, units)
    body: dict[str, Any] = {"Items": [i for i, _ in items], "Count": len(items), "ScannedCount": len(items),
                            "_bytes": size}
    if params.get("ReturnConsumedCapacity", "NONE") != "NONE":
        body["ConsumedCapacity"] = {"TableName": table.name, "CapacityUnits": units}
    if last is not None:
        body["LastEvaluatedKey"] = last
    return body


def _key_attrs(table: Table, index: Index, item: dict[str, Any]) -> dict[str, Any]:
    return {a: item[a] for a in dict.fromkeys((*table.base.attrs, *index.attrs))}


OPERATIONS: dict[str, Callable[[DynamoModel, dict[str, Any]], dict[str, Any]]] = {
    "CreateTable": create_table, "DescribeTable": describe_table,
    "UpdateContinuousBackups": update_continuous_backups, "GetItem": get_item, "PutItem": put_item,
    "DeleteItem": delete_item, "BatchWriteItem": batch_write_item, "BatchGetItem": batch_get_item,
    "Query": query,
}  # fmt: skip
