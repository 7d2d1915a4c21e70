"""How S3 calls are retried: which boto3 errors mean "the endpoint is unreachable or busy", the
exponential backoff between attempts, and how long to keep trying (``POSTTRAIN_S3_RETRY_SECONDS``).

Used by ``S3Store._call`` in :mod:`posttrain.storage`, which re-exports :func:`s3_retry_seconds`.
"""

from __future__ import annotations

import os


def s3_retry_seconds() -> float:
    """How long one S3 operation keeps retrying an unreachable endpoint (``POSTTRAIN_S3_RETRY_SECONDS``, 300)."""
    return float(os.environ.get("POSTTRAIN_S3_RETRY_SECONDS", "300"))


# Error codes of an overloaded or briefly unavailable S3 endpoint (besides any 5xx status).
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
                    "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
_BACKOFF_FIRST, _BACKOFF_CAP = 1.0, 30.0  # seconds: 1, 2, 4, ... 30, 30 (each times a jitter in [0.5, 1])


def _transient(e: BaseException | None) -> bool:
    """Whether an exception from boto3 means "the endpoint is unreachable or busy": worth retrying."""
    from boto3.exceptions import RetriesExceededError
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, HTTPClientError)):  # refused, reset, DNS, timeouts
            return True
        if isinstance(e, ClientError):
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or e.response.get("Error", {}).get("Code") in _TRANSIENT_CODES
        if isinstance(e, RetriesExceededError):
            e = e.last_exception
            continue
        e = e.__cause__ or e.__context__  # boto3's S3UploadFailedError keeps the ClientError only as context
    return False


def _error_code(e: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(e, ClientError):
        return str(e.response.get("Error", {}).get("Code", ""))
    return ""
