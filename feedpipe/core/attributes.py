"""DynamoDB's typed JSON (``{"S": "x"}``) to plain Python values, without boto3."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

# DynamoDB itself allows 32 levels of nested maps and lists in an item.
MAX_ATTRIBUTE_DEPTH = 50
# isinstance(x, MAPPINGS) is isinstance(x, Mapping), answered at once for a dict (what JSON
# decodes to) instead of by the ABC's slower check: it is asked of every attribute and record read.
MAPPINGS = (dict, Mapping)


class AttributeValueError(ValueError):
    """A DynamoDB attribute value that does not follow the wire format."""


def _number(text: str) -> int | float:
    value = Decimal(text)
    if value == value.to_integral_value() and "e" not in text.lower() and "." not in text:
        return int(value)
    return float(value)


def _binary(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return base64.b64decode(value)


def from_attribute_value(av: Any, depth: int = 0) -> Any:
    """One attribute value to its Python value; raises AttributeValueError for anything malformed,
    nesting deeper than DynamoDB allows included (before it could exhaust Python's stack)."""
    if not isinstance(av, MAPPINGS) or len(av) != 1:
        raise AttributeValueError(f"not an attribute value: {str(av)[:80]!r}")
    ((kind, value),) = av.items()
    try:
        match kind:
            case "S":
                if not isinstance(value, str):
                    raise AttributeValueError("S must hold a string")
                return value
            case "N":
                return _number(value)
            case "BOOL":
                if not isinstance(value, bool):
                    raise AttributeValueError("BOOL must hold a boolean")
                return value
            case "NULL":
                return None
            case "M":
                return from_image(value, depth + 1)
            case "L":
                if depth >= MAX_ATTRIBUTE_DEPTH:
                    raise AttributeValueError(f"attributes nest deeper than {MAX_ATTRIBUTE_DEPTH} levels")
                return [from_attribute_value(v, depth + 1) for v in value]
            case "SS":
                return {str(v) for v in value}
            case "NS":
                return {_number(v) for v in value}
            case "B":
                return _binary(value)
            case "BS":
                return {_binary(v) for v in value}
    except (TypeError, ArithmeticError, ValueError) as exc:
        if isinstance(exc, AttributeValueError):
            raise
        raise AttributeValueError(f"bad {kind} value: {exc}") from exc
    raise AttributeValueError(f"unknown attribute type {kind!r}")


def from_image(image: Any, depth: int = 0) -> dict[str, Any]:
    """A whole item (``{"PK": {"S": ...}, ...}``) to a plain dict."""
    if not isinstance(image, MAPPINGS):
        raise AttributeValueError("an item image must be a map")
    if depth > MAX_ATTRIBUTE_DEPTH:
        raise AttributeValueError(f"attributes nest deeper than {MAX_ATTRIBUTE_DEPTH} levels")
    return {str(name): from_attribute_value(av, depth) for name, av in image.items()}
