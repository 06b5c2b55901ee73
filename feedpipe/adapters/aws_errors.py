"""The one classification of AWS errors: throttling, and what else is worth waiting out.

botocore already retries each call a few times; an error that still comes out of a call is
transient when AWS (or the network to it) is briefly unavailable (throttling, 5xx answers, lost
connections), and anything else (access denied, a missing table, a bad request) when retrying
the same way will not help. The throttle metric, the stream readers and the tasks all ask here.
"""

from __future__ import annotations

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

THROTTLING_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "LimitExceededException", "KMSThrottlingException",  # the last: encrypted Kinesis streams
})
INVALID_REQUEST_CODES = frozenset({"ValidationException", "SerializationException"})  # never worth a retry
TRANSIENT_CODES = THROTTLING_CODES | {
    "InternalServerError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException",
}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_throttling(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in THROTTLING_CODES


def is_transient_aws_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in TRANSIENT_CODES or int(status or 0) >= 500
    return False


def is_invalid_request(exc: BaseException) -> bool:
    """A request DynamoDB refuses as malformed: the same request fails the same way again."""
    return isinstance(exc, ClientError) and error_code(exc) in INVALID_REQUEST_CODES
