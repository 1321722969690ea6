"""Read load balancing over a changing set of nodes (the same policies as the Rust client)."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

from .types import NodeStats

#: How long a node that failed is skipped while others are available, in seconds.
BENCH_SECONDS = 2.0
#: Weight of the newest sample in the latency average.
EWMA_ALPHA = 0.2


class Policy(str, Enum):
    """How a read picks its node."""

    ROUND_ROBIN = "round_robin"
    LEAST_OUTSTANDING = "least_outstanding"
    POWER_OF_TWO = "power_of_two"


@dataclass
class Backend:
    """One node reads can go to, with what this process has seen of it."""

    url: str
    outstanding: int = 0
    latency_s: float = 0.0
    served: int = 0
    failures: int = 0
    benched_until: float = 0.0

    def score(self) -> float:
        # An unmeasured node looks fast so that it gets its first samples.
        return max(self.latency_s, 1e-6) * (self.outstanding + 1)


@dataclass
class Lease:
    """One request on one node; call `success` or `failure` exactly once."""

    backend: Backend
    balancer: "Balancer"
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return self.backend.url

    def success(self) -> None:
        self.balancer._finish(self, ok=True)

    def failure(self) -> None:
        self.balancer._finish(self, ok=False)

    def release(self) -> None:
        """The request was abandoned (cancelled, or failed before it was sent): no verdict."""
        self.balancer._finish(self, ok=None)


class Balancer:
    """Picks a node per read. Thread-safe."""

    def __init__(self, policy: Policy | str = Policy.POWER_OF_TWO) -> None:
        self.policy = Policy(policy)
        self._lock = threading.Lock()
        self._backends: list[Backend] = []
        self._next = 0
        self._rng = random.Random()

    def set(self, urls: list[str]) -> None:
        """Replaces the set of nodes, keeping what was learnt about those that stay."""
        with self._lock:
            old = {b.url: b for b in self._backends}
            new: list[Backend] = []
            for url in urls:
                url = url.rstrip("/")
                if all(b.url != url for b in new):
                    new.append(old.get(url) or Backend(url))
            self._backends = new

    def urls(self) -> list[str]:
        with self._lock:
            return [b.url for b in self._backends]

    def stats(self) -> list[NodeStats]:
        """Per-node counters: url, outstanding, latency_ms, served, failures."""
        with self._lock:
            return [
                {
                    "url": b.url,
                    "outstanding": b.outstanding,
                    "latency_ms": b.latency_s * 1e3,
                    "served": b.served,
                    "failures": b.failures,
                }
                for b in self._backends
            ]

    def pick(self, exclude: list[str] | None = None) -> Lease | None:
        """A node not in `exclude`, preferring nodes that have not failed lately."""
        exclude = exclude or []
        now = time.monotonic()
        with self._lock:
            allowed = [b for b in self._backends if b.url not in exclude]
            pool = [b for b in allowed if b.benched_until <= now] or allowed
            if not pool:
                return None
            if len(pool) == 1:
                chosen = pool[0]
            elif self.policy is Policy.ROUND_ROBIN:
                chosen = pool[self._next % len(pool)]
                self._next += 1
            elif self.policy is Policy.LEAST_OUTSTANDING:
                start = self._next
                self._next += 1
                rotated = pool[start % len(pool):] + pool[: start % len(pool)]
                chosen = min(rotated, key=lambda b: b.outstanding)
            else:
                a, b = self._rng.sample(pool, 2)
                chosen = b if b.score() < a.score() else a
            chosen.outstanding += 1
            return Lease(chosen, self)

    def _finish(self, lease: Lease, ok: bool | None) -> None:
        with self._lock:
            b = lease.backend
            b.outstanding = max(0, b.outstanding - 1)
            if ok is None:
                return
            if ok:
                sample = time.monotonic() - lease.started
                b.latency_s = sample if b.latency_s == 0 else (
                    b.latency_s * (1 - EWMA_ALPHA) + sample * EWMA_ALPHA
                )
                b.served += 1
            else:
                b.failures += 1
                b.benched_until = time.monotonic() + BENCH_SECONDS
