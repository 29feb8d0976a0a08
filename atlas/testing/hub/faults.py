"""Failures the local Hub injects on request (status codes, slow, cut off), and its request log."""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass
from typing import Any

FAULT_KINDS = ("500", "502", "503", "429", "slow", "truncate", "drop")

@dataclass
class Fault:
    """Injected failure for requests whose path matches a glob; fires ``times`` times."""

    pattern: str
    kind: str
    times: int = 1
    method: str | None = None
    delay: float = 1.0  # "slow": seconds to wait before answering normally
    after_bytes: int = 0  # "truncate": body bytes sent before the connection is closed
    retry_after: int = 0  # "429": Retry-After header
    fired: int = 0


class FaultPlan:
    """Thread-safe list of faults, consumed in order; a fault stops matching once spent."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, pattern: str, kind: str | int, times: int = 1, **options: Any) -> Fault:
        """Inject ``kind`` (500, 502, 503, 429, slow, truncate, drop) for matching paths."""
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        fault = Fault(pattern, kind, times, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """Consume and return the first live fault matching this request, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.fired >= fault.times or (fault.method and fault.method != method):
                    continue
                if fnmatch.fnmatchcase(path, fault.pattern):
                    fault.fired += 1
                    return fault
        return None

    @property
    def pending(self) -> int:
        """Failures still to be injected."""
        with self._lock:
            return sum(f.times - f.fired for f in self._faults)

    def clear(self) -> None:
        """Drop all faults."""
        with self._lock:
            self._faults.clear()


@dataclass
class RequestRecord:
    """One request seen by the server (status is set before the answer is sent)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int | None = None
