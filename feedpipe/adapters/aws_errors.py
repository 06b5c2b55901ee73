"""Which AWS errors are worth waiting out: throttling, 5xx answers, lost connections.

botocore already retries each call a few times; an error that still comes out of a call is one
of these when AWS (or the network to it) is briefly unavailable, and anything else (access
denied, a missing table, a bad request) when retrying the same way will not help.
"""

from __future__ import annotations

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

TRANSIENT_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "LimitExceededException", "KMSThrottlingException", "InternalServerError", "InternalFailure",
    "ServiceUnavailable", "ServiceUnavailableException",
})


def is_transient_aws_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in TRANSIENT_CODES or int(status or 0) >= 500
    return False
