"""Error answers paced per client address (`ErrorPace`), for both APIs.

A client replaying refused requests in a closed loop is answered as fast as
it is refused; each refusal is cheap, but hundreds a second keep a core
busy (the client's and the server's), which good calls on the same host
then wait for. So each client address has a token bucket: `rate` error
answers a second and a burst of as many pass at once; past the burst an
error answer is held until its token is due, at most `max_delay` seconds
(the bucket's debt is capped to match). The client then gets `rate` answers
a second however fast it sends. Good answers are never held, and one
address's errors never hold another's.

REST holds an answer in its connection's own thread. A gRPC answer is held
in one of the server's worker threads, so at most `max_held` gRPC answers
are held at once (the server has that many workers more than it serves
calls with); past them an error answer is given at once.
"""

from __future__ import annotations

import threading
import time

MAX_DELAY = 1.0  # seconds an error answer is held at most


def peer_address(peer: str) -> str:
    """A gRPC peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000") without its scheme and port."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return peer
    host = rest.rpartition(":")[0] or rest
    return host.strip("[]")


class ErrorPace:
    """Token buckets of error answers per client address.

    Args:
      rate: error answers a second an address gets past a burst of as many
        (0: none are held).
      max_delay: the longest an answer is held, in seconds.
      max_held: how many answers may be held at once (None: no bound).
    """

    def __init__(self, rate: float, max_delay: float = MAX_DELAY, max_held: int | None = None):
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.rate = float(rate)
        self.max_delay = float(max_delay)
        self.budget: dict = {}  # address -> (answers left, when counted)
        self._lock = threading.Lock()
        self._held = threading.BoundedSemaphore(max_held) if max_held else None

    def delay(self, address: str, now: float | None = None) -> float:
        """Takes a token for an error answer to `address`: the seconds it must wait for
        it (0: answer now)."""
        rate = self.rate
        if rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            left, since = self.budget.get(address, (rate, now))
            left = max(min(rate, left + (now - since) * rate) - 1.0, -rate * self.max_delay)
            self.budget[address] = (left, now)
        return min(max(0.0, -left / rate), self.max_delay)

    def hold(self, address: str) -> float:
        """Waits what an error answer to `address` is due (if a holding slot is free);
        the seconds waited."""
        wait = self.delay(address)
        if wait <= 0:
            return 0.0
        if self._held is not None and not self._held.acquire(blocking=False):
            return 0.0
        try:
            time.sleep(wait)
        finally:
            if self._held is not None:
                self._held.release()
        return wait

    def forget(self, now: float | None = None) -> None:
        """Drops the buckets that have refilled (an address not heard from for a while)."""
        if not self.rate:
            return
        now = time.monotonic() if now is None else now
        full = 1.0 + self.max_delay  # seconds in which any bucket refills
        with self._lock:
            for address in [a for a, (_, since) in self.budget.items() if now - since > full]:
                del self.budget[address]
