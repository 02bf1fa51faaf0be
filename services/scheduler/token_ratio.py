"""How much KV to hold back for running requests' future tokens when admitting new ones.

Like SGLang, the scheduler guesses that a running request will still generate
`ratio * remaining max_new_tokens` tokens. The ratio starts high, decays with every decode step
while memory holds, and jumps back up after a retraction proves the guess too optimistic.
"""

from __future__ import annotations

from collections.abc import Iterable

from radixmesh.services.scheduler.request import SchedReq

INIT_RATIO = 0.7
MIN_RATIO_FACTOR = 0.14
DECAY_STEPS = 600
# Longer outputs than this are planned as if they were this long: a request asking for 32k
# tokens should not block admissions when it will most likely stop far earlier.
CLIP_MAX_NEW_TOKENS = 4096
# After a retraction, assume survivors need at least this many more steps' worth of tokens.
RETRACT_HEADROOM_STEPS = 20


class NewTokenRatio:
    def __init__(self, conservativeness: float) -> None:
        self.initial = min(INIT_RATIO * conservativeness, 1.0)
        self.minimum = min(self.initial * MIN_RATIO_FACTOR, 1.0)
        self.decay = (self.initial - self.minimum) / DECAY_STEPS
        self.value = self.initial

    def step(self) -> None:
        self.value = max(self.value - self.decay, self.minimum)

    def reset(self) -> None:
        self.value = self.initial

    def after_retraction(self, survivors: Iterable[SchedReq]) -> None:
        decoded = max_new = count = 0
        for req in survivors:
            decoded += len(req.output_ids)
            max_new += req.sampling.max_new_tokens
            count += 1
        if max_new:
            estimate = (decoded + RETRACT_HEADROOM_STEPS * count) / max_new
            self.value = min(1.0, max(self.value, estimate))

    def reserve(self, req: SchedReq) -> int:
        """Tokens to keep free for `req`'s future output."""
        return int(min(req.remaining_new_tokens, CLIP_MAX_NEW_TOKENS) * self.value)
