"""Retrying store operations: exponential backoff with full jitter, under a deadline.

Only transient failures are retried (5xx, throttling, resets, timeouts, cut-short
bodies); a missing object, a refused credential or a bad request fails at once.
The cloud clients underneath retry too (botocore, s3fs, gcsfs each have a loop), so one
attempt here may already be several requests; their limits are set through
``storage_options``, which roxxel passes on untouched.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..errors import RoxxelError
from .errors import Kind, classify, describe, translate
from .through import Revoked
from .urls import redact
from .watchdog import watched

__all__ = ["DEFAULT_POLICY", "NO_RETRY", "RetryPolicy", "call"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Raised by code that is wrong rather than by a store that failed, or by an attempt whose
# bytes are no longer wanted (Revoked): never retried, never translated.
_PASS_THROUGH = (RoxxelError, TypeError, AttributeError, NameError, AssertionError, ImportError, Revoked)


@dataclass(frozen=True)
class RetryPolicy:
    """How long a store operation keeps trying.

    ``deadline``: no new attempt starts more than this many seconds after the first
    failure, so a long transfer that fails late still gets its retries.
    ``unreachable_deadline``: the (shorter) window when the endpoint refuses connections
    or does not resolve, which is usually a misconfiguration rather than a blip.
    The n-th retry waits a random time in ``[0, min(max_delay, base_delay * 2**(n-1))]``.
    ``stall_timeout``: an attempt that receives nothing for this many seconds (a request
    without a response, a download body without a byte) is abandoned and retried like a
    transient failure; None waits forever. A healthy store sends a body's bytes every few
    milliseconds and answers a request within seconds even under load, so 30 s leaves a
    wide margin while bounding the time accelerators wait on a dead connection.
    ``upload_timeout``: an upload shows no progress until the store answers, so it is
    abandoned only after this many seconds plus one per MiB it sends (a store may take a
    while to assemble a large object before it answers); None never abandons one.
    Manifest publishes are never abandoned, whatever the policy.
    """

    max_attempts: int = 8
    deadline: float = 60.0
    unreachable_deadline: float = 5.0
    base_delay: float = 0.2
    max_delay: float = 10.0
    stall_timeout: float | None = 30.0
    upload_timeout: float | None = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("stall_timeout", "upload_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"RetryPolicy.{name} must be > 0 or None, got {value}")
        for name in ("deadline", "unreachable_deadline", "base_delay", "max_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetryPolicy.{name} must be >= 0, got {getattr(self, name)}")

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (full jitter)."""
        cap = min(self.max_delay, self.base_delay * 2 ** min(failures - 1, 62))
        return random.uniform(0.0, cap)

    def window(self, kind: Kind) -> float:
        """Seconds after the first failure during which new attempts may start."""
        if kind is Kind.UNREACHABLE:
            return min(self.deadline, self.unreachable_deadline)
        return self.deadline


DEFAULT_POLICY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


_POLICY_TIMEOUT = -1.0  # "use policy.stall_timeout"


def call(
    fn: Callable[[], T],
    *,
    op: str,
    url: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    timeout: float | None = _POLICY_TIMEOUT,
    on_failure: Callable[[BaseException], object] | None = None,
) -> T:
    """Return ``fn()``, retrying transient failures; raise a roxxel error otherwise.

    Every backend exception leaves as a :class:`~roxxel.errors.StorageError` subclass
    chained to the original (``TransientStorageError`` once retries are exhausted).
    Roxxel errors and programming errors (TypeError, AttributeError, ...) pass unchanged.
    ``op`` (a verb such as ``"read"``) and ``url`` are only used in messages and logs.
    An attempt silent for ``timeout`` seconds (default: the policy's ``stall_timeout``;
    None: no limit; see :func:`.watchdog.watched`) is abandoned and counts as a
    transient failure. ``on_failure(exc)`` is told of each failed attempt that will be
    retried (the download engine backs off when the store throttles).
    """
    if timeout == _POLICY_TIMEOUT:
        timeout = policy.stall_timeout
    started = time.monotonic()
    first_failure: float | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            return watched(fn, timeout)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            kind = classify(exc)
            if not kind.retryable:
                raise translate(exc, kind, op, url, attempts=attempt) from exc
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
            delay = policy.backoff(attempt)
            if attempt >= policy.max_attempts or now + delay - first_failure > policy.window(kind):
                raise translate(
                    exc, kind, op, url, attempts=attempt, elapsed=now - started
                ) from exc
            if on_failure is not None:
                on_failure(exc)
            logger.info(
                "%s %s: attempt %d/%d failed (%s: %s); retrying in %.2fs",
                op, redact(url), attempt, policy.max_attempts, kind.value, describe(exc), delay,
            )
            time.sleep(delay)
