"""Per-request sampling parameters, shared by every service, and their validation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.text_checks import check_utf8

MAX_SEED = 2**63 - 1
MAX_INT32 = 2**31 - 1  # the wire's width for counts
PENALTY_RANGE = (-2.0, 2.0)
# Below this, temperature means greedy: dividing logits by it overflows float32 (inf - inf is
# NaN) long before 0, and the tempered distribution is already one-hot to float precision.
GREEDY_TEMPERATURE = 1e-5
# What may happen to prompt pages another node holds (`--hicache-remote-policy`, and the
# request's override): decided per request from measured speeds, or forced either way.
REMOTE_POLICIES = ("auto", "fetch", "recompute")


@dataclass(frozen=True, slots=True)
class SamplingLimits:
    """How long the lists of one request may be. The front door's flags set them (OpenAI takes
    4 stop strings, vLLM and SGLang any number); every later entry checks `HARD_LIMITS`."""

    max_stop_strings: int = 16
    max_stop_string_length: int = 256    # characters
    max_stop_token_ids: int = 64

    def check_within(self, ceiling: SamplingLimits) -> None:
        """Raises ValueError naming the flag of a limit below 1 or above `ceiling`'s."""
        for name in self.__dataclass_fields__:
            value, most = getattr(self, name), getattr(ceiling, name)
            if not 1 <= value <= most:
                raise ValueError(f"--{name.replace('_', '-')} must be in [1, {most}], got {value}")


# What a service accepts whatever its caller checked (design §11: a service never trusts its
# caller), and the largest values the front door's flags may take. It bounds the detokenizer's
# work per request: a stop-string automaton of at most 64 x 512 characters (about 30 ms to
# build on one CPU core; 3 ms at the defaults).
HARD_LIMITS = SamplingLimits(max_stop_strings=64, max_stop_string_length=512,
                             max_stop_token_ids=1024)
DEFAULT_LIMITS = SamplingLimits()


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What a client may ask of sampling and stopping. Names follow SGLang's.

    A temperature below GREEDY_TEMPERATURE (0 included) or `top_k == 1` means greedy. `top_k`
    of -1 or 0 means no limit.
    Penalties follow vLLM's semantics: frequency and presence penalties look at output tokens,
    the repetition penalty at prompt and output tokens alike.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # Not sampling, but per request like it: whether prompt pages another node holds are
    # fetched, recomputed, or left to the server's decision (None: --hicache-remote-policy).
    hicache_remote_policy: str | None = None

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
                or self.repetition_penalty != 1.0)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> SamplingParams:
        """Builds from a JSON-like dict, rejecting unknown keys by name; a lone stop string
        counts as a list of one. Types and ranges are `validate`'s job, done once per entry."""
        known = cls.__dataclass_fields__
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidRequestError(unknown[0], "unknown sampling parameter")
        kwargs = dict(values)
        for name in ("stop", "stop_token_ids"):
            if name in kwargs:
                kwargs[name] = _as_tuple(name, kwargs[name])
        return cls(**kwargs)

    def validate(self, vocab_size: int, limits: SamplingLimits = HARD_LIMITS) -> None:
        """The one sampling validator: every entry (HTTP, public gRPC, the scheduler's own)
        calls it once. Raises InvalidRequestError naming the first field of a wrong type or
        out of its range, or a list past `limits`."""
        self._check_types()
        self._check_ranges()
        check_stop_lists(self.stop, self.stop_token_ids, limits)
        self._check_stops(vocab_size)

    def _check_types(self) -> None:
        """JSON can carry anything; the wire carries its declared types but doubles may be
        NaN or infinite."""
        for name in ("max_new_tokens", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequestError(name, f"must be an integer, got {value!r}")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequestError(name, f"must be a number, got {value!r}")
            if not _is_finite(value):
                raise InvalidRequestError(name, f"must be finite, got {value!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidRequestError("seed", f"must be an integer, got {self.seed!r}")
        if not isinstance(self.ignore_eos, bool):
            raise InvalidRequestError("ignore_eos", "must be a boolean")
        if self.hicache_remote_policy not in REMOTE_POLICIES + (None,):
            raise InvalidRequestError("hicache_remote_policy", f"must be one of "
                                      f"{', '.join(REMOTE_POLICIES)}, got "
                                      f"{self.hicache_remote_policy!r}")

    def _check_ranges(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidRequestError("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InvalidRequestError("temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError("top_p", f"must be in (0, 1], got {self.top_p}")
        if not -1 <= self.top_k <= MAX_INT32:
            raise InvalidRequestError(
                "top_k", f"must be -1, 0 (no limit) or in [1, 2**31 - 1], got {self.top_k}")
        if self.max_new_tokens > MAX_INT32:
            raise InvalidRequestError("max_new_tokens", f"must be < 2**31, got {self.max_new_tokens}")
        if not 0 <= self.min_p <= 1:
            raise InvalidRequestError("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise InvalidRequestError("seed", f"must be in [0, 2**63 - 1], got {self.seed}")
        low, high = PENALTY_RANGE
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not low <= value <= high:
                raise InvalidRequestError(name, f"must be in [{low}, {high}], got {value}")
        if not 0 < self.repetition_penalty <= 2:
            raise InvalidRequestError(
                "repetition_penalty", f"must be in (0, 2], got {self.repetition_penalty}")

    def _check_stops(self, vocab_size: int) -> None:
        for token_id in self.stop_token_ids:
            if isinstance(token_id, bool) or not isinstance(token_id, int):
                raise InvalidRequestError("stop_token_ids", f"must be integers, got {token_id!r}")
            if not 0 <= token_id < vocab_size:
                raise InvalidRequestError(
                    "stop_token_ids", f"{token_id} is outside the vocabulary [0, {vocab_size})")


def check_stop_lists(stop: Sequence[object], stop_token_ids: Sequence[object],
                     limits: SamplingLimits) -> None:
    """Counts and lengths first, so that no later check walks an oversized list; then each
    stop string's type and encoding: a lone surrogate ("\\ud800" in JSON) cannot cross the
    wire, and would break the link that carried it."""
    if len(stop) > limits.max_stop_strings:
        raise InvalidRequestError(
            "stop", f"at most {limits.max_stop_strings} stop strings are allowed, got {len(stop)}")
    if len(stop_token_ids) > limits.max_stop_token_ids:
        raise InvalidRequestError("stop_token_ids", f"at most {limits.max_stop_token_ids} "
                                  f"stop token ids are allowed, got {len(stop_token_ids)}")
    for index, text in enumerate(stop):
        if not isinstance(text, str) or not text:
            raise InvalidRequestError("stop", "stop strings must be non-empty strings")
        if len(text) > limits.max_stop_string_length:
            raise InvalidRequestError(
                "stop", f"stop string {index} has {len(text)} characters; at most "
                f"{limits.max_stop_string_length} are allowed")
        check_utf8("stop", text)


_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty",
                 "repetition_penalty")


def _is_finite(value: int | float) -> bool:
    """False for inf and NaN, and for ints too large for a float (math.isfinite raises)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _as_tuple(name: str, value: object) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if name == "stop" else _raise_list(name)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return _raise_list(name)


def _raise_list(name: str) -> tuple:
    raise InvalidRequestError(name, "must be a list")
