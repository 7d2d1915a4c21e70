"""Credentials out of logs: the values of the process's credential variables, replaced in every
log record as it is created.

The pipeline itself never logs a credential; libraries do at DEBUG (botocore's wire trace prints
the ``Authorization`` and ``X-Amz-Security-Token`` headers), and an operator debugging a run may
turn that on (``PREFECT_LOGGING_ROOT_LEVEL=DEBUG``). :func:`install_log_redaction` wraps the
log-record factory, so every handler (console, Prefect's API handler, a test's capture) sees the
redacted text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Callable, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Credential variables by name; any other variable named like one (``*_API_KEY``, ``*_TOKEN``...) too.
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "HF_TOKEN")
_SECRET_NAME = re.compile(r"(KEY|KEY_ID|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH_STRING)$", re.IGNORECASE)
# Variables holding URLs that may carry a password (``https://user:token@host``).
URL_ENV = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
# Shorter values are left alone: redacting "1" or "true" everywhere would garble every log line.
MIN_LENGTH = 8

_registered: set[str] = set()
_registered_version = 0
_lock = threading.Lock()
_installed = False


def register_secret(value: str | None) -> None:
    """Also redact ``value`` (a key read from a variable of any name, say a teacher's ``api_key_env``)."""
    global _registered_version
    if value and len(value) >= MIN_LENGTH:
        with _lock:
            _registered.add(value)
            _registered_version += 1


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values to redact, longest first: credential variables, passwords inside URL variables,
    and registered values. Values shorter than ``MIN_LENGTH`` characters are skipped."""
    environ = os.environ if environ is None else environ
    with _lock:
        values = set(_registered)
    for name, value in environ.items():
        if name in SECRET_ENV or _SECRET_NAME.search(name):
            values.add(value)
        elif name in URL_ENV:
            try:
                values.add(urlsplit(value).password or "")
            except ValueError:
                pass
    return sorted((v for v in values if len(v) >= MIN_LENGTH), key=len, reverse=True)


_cache: tuple[dict, int, list[str]] = ({}, -1, [])


def _current_values() -> list[str]:
    """``secret_values()`` of this process, recomputed only when the environment or the registered
    values changed (a record factory asks for every record)."""
    global _cache
    data = getattr(os.environ, "_data", None)  # CPython's raw mapping: comparing it is cheap
    seen, version, values = _cache
    if data is None or version != _registered_version or data != seen:
        version = _registered_version
        values = secret_values()
        _cache = (dict(data) if data is not None else {}, version, values)
    return values


def redact(text: str, values: Iterable[str] | None = None) -> str:
    """``text`` with every secret value (``secret_values()`` by default) replaced by ``***``."""
    for value in _current_values() if values is None else values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def display_url(url: str) -> str:
    """``url`` without the user and password it may carry: ``https://u:p@host/x`` -> ``https://host/x``."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return redact(url)


def _redacting_factory(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        values = _current_values()
        if not values:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when a handler formats the record
            return record
        clean = redact(message, values)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if (clean := redact(text, values)) != text:
                record.exc_text = clean
        return record

    make.posttrain_redaction = True  # type: ignore[attr-defined]
    return make


def install_log_redaction() -> None:
    """Redact secret values from every log record created in this process from now on (idempotent).

    A record's message is formatted at creation when it holds a secret (``msg`` becomes the
    redacted text, ``args`` empty); an exception's traceback is formatted and redacted into
    ``exc_text``. Records logged by child processes are not covered unless they install it too.
    """
    global _installed
    with _lock:
        if _installed:
            return
        logging.setLogRecordFactory(_redacting_factory(logging.getLogRecordFactory()))
        _installed = True
