"""When an adaptive batch goes: the policy of ``[classifier] target_batch = "auto"``.

It needs no setting. The batcher tells it how many documents are out (in requests that
run or wait for a slot), in the open batch, and due back (one per document of each
request that ended: in a closed loop, where each SMTP session or Postfix delivery agent
sends its next message only once this one is answered, its sender's next message), and
how long each answered call took. From that it learns two things:

* the API's latency: an exponentially weighted mean of answered calls
  (``LATENCY_WEIGHT``; ``PRIOR_LATENCY`` before the first answer);
* the concurrency: the most documents out + open + due back at once over the last one
  to two windows of ``PEAK_WINDOWS`` latencies. In a closed loop that is the number of
  senders; in an open one, the arrival rate x the time each message spends here.

The target is half the concurrency, so that two requests take turns: while one group's
request runs, the other group gathers, which is about what arrives during one call. The
open batch goes

1. at once when nothing is out, unless more documents are due back than it holds: one
   message alone at idle pays the API's latency only. In a closed loop the two groups
   can both be back at once (the last answer ended while its twin's group was still
   coming back): the half-gathered batch then waits for the rest of its group and the
   group just released instead of going with a part of it, which split a group of 25
   into 10 + 15 for good (three requests per turn instead of two). Measured at 50
   sessions, smtp-source -> gateway (2 workers) -> smtp-sink, 5,000 messages, API at
   100 ms, three runs each alternating: 0.040-0.041 requests per message against
   0.043-0.057 with the old rule, the same msgs/s;
2. when it holds the target. The concurrency includes the load of the moment, so from
   an idle start the target grows with the load as it shows itself: sizes 1, 1, 2, 2,
   ..., as TCP's slow start, until the two groups settle;
3. when nothing is due back (the group an answer released is all back, or no request
   ended within the last two latencies) or nothing new came for a tenth of the latency
   (``QUIET_SHARE``), if it holds 2/3 of the target: the members of one group come back
   together, and the batch goes with the last of them instead of waiting for a target it
   will not reach. A smaller batch (a few stragglers) waits to merge with the next group
   coming back;
4. in any case when its oldest document has waited half the learned latency
   (``WAIT_SHARE``), or ``max_wait_ms`` if that is shorter: a request that hangs (a
   timeout on its way) keeps its documents out, and nobody waits for it longer.

Measured with real HTTP to the emulator at 100 ms, callers in a closed loop each
spending 2 ms (50 callers; 1 ms for 20 and 10) of blocking CPU per message, as the
gateway's parse, rules and relay do, on a shared 2-core machine (noisy): 50 callers
settle into two groups of 25, 0.046 requests per message, 265 msgs/s against 217 for
group commit (the old default: one request out at a time, batches of 1 and 49) and
277-295 for a hand-set ``target_batch = 25``; 20 callers: groups of 10, 145 msgs/s; 10
callers: groups of 5, 82 msgs/s against 76. The gateway itself (``smtp-source``, 50
sessions, 3,000 messages of 4 KB): 0.047-0.054 requests per message. Under an open load
the wait ceiling bounds what batching adds to 50 ms at 100 ms of API latency.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LATENCY_WEIGHT", "PRIOR_LATENCY", "QUIET_SHARE", "WAIT_SHARE", "AdaptivePolicy"]

# Seconds assumed before the first answer: an idle start sends at once anyway.
PRIOR_LATENCY = 0.1
# The weight of the newest call in the latency mean: about the last ten calls count.
LATENCY_WEIGHT = 0.2
# The longest wait as a share of the learned latency.
WAIT_SHARE = 0.5
# A batch whose last document came this share of the learned latency ago goes: the
# burst of messages one answer released has ended, and nobody else is on the way soon.
QUIET_SHARE = 0.1
# The concurrency is the peak load over 1 to 2 windows of this many learned latencies.
PEAK_WINDOWS = 2.0


@dataclass
class AdaptivePolicy:
    """The adaptive batching policy (see the module's docstring). Pure: time comes in as
    arguments, so a test drives it with a fake clock."""

    max_wait: float  # seconds: the ceiling (``max_wait_ms``)
    min_batch: int = 1
    latency: float | None = None  # learned, seconds; None before the first answer
    calls: int = 0
    # The most documents seen in the batcher at once (out + open batch), over the current
    # and the previous window of PEAK_WINDOWS learned latencies.
    _peak: int = 0
    _peak_before: int = 0
    _window_start: float = float("-inf")

    def observe(self, seconds: float) -> None:
        """An answered call took ``seconds``."""
        self.calls += 1
        if self.latency is None:
            self.latency = seconds
        else:
            self.latency += LATENCY_WEIGHT * (seconds - self.latency)

    def learned(self) -> float:
        """The API's latency as learned (seconds), the prior before the first answer."""
        return PRIOR_LATENCY if self.latency is None else self.latency

    def note(self, now: float, load: int) -> None:
        """``load`` documents are out, open or due back at ``now`` (seconds)."""
        window = PEAK_WINDOWS * self.learned()
        if now - self._window_start >= window:
            recent = now - self._window_start < 2 * window
            self._peak_before = self._peak if recent else 0
            self._peak = 0
            self._window_start = now
        self._peak = max(self._peak, load)

    @property
    def concurrency(self) -> int:
        """The documents in the batcher at once, at most, lately: in a closed loop the
        senders' number; in an open one, the arrival rate x the time each spends here."""
        return max(self._peak, self._peak_before)

    def target(self) -> int:
        """The batch size that makes two requests take turns: half the concurrency."""
        return max(1, -(-self.concurrency // 2))

    def ready(self, pending: int, out: int, expected: int = 0) -> bool:
        """Does a batch of ``pending`` documents go now, with ``out`` documents out and
        ``expected`` due back?"""
        if pending < self.min_batch:
            return False
        if (out == 0 and expected <= pending) or pending >= self.target():
            return True
        # The group an answer released is all back: nobody else is on the way soon.
        return expected == 0 and self.quiet_ready(pending)

    def quiet_ready(self, pending: int) -> bool:
        """Does a batch that saw no new document for ``quiet()`` go? Not when it holds under
        2/3 of the target: a few stragglers wait to join the next group coming back."""
        return pending >= max(self.min_batch, -(-2 * self.target() // 3))

    def quiet(self) -> float:
        """After this long without a new document (seconds), the open batch goes."""
        return min(self.max_wait, QUIET_SHARE * self.learned())

    def wait(self) -> float:
        """The longest a document may wait in an open batch, in seconds."""
        return min(self.max_wait, WAIT_SHARE * self.learned())
