"""What an internal service checks of a request it is handed (design §11: a service never
trusts its caller to have checked).

The front door validates first and names the client's fields; these checks are the same
rules at a service's own entry (the scheduler's Submit), so that a request sent straight to
an internal port, or by a front door of another implementation, fails alone with
INVALID_ARGUMENT instead of reaching the worker, whose step it would break for every request.
"""

from __future__ import annotations

from collections.abc import Sequence

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import HARD_LIMITS, SamplingLimits
from radixmesh.shared.text_checks import check_cache_salt, check_rid


def check_token_ids(ids: Sequence[int], vocab_size: int, field: str = "input_ids") -> None:
    """Every id in [0, vocab_size): one id outside fails a whole forward pass."""
    if not ids:
        raise InvalidRequestError(field, "must not be empty")
    low, high = min(ids), max(ids)  # C speed; the position is looked up only on failure
    if low >= 0 and high < vocab_size:
        return
    bad = low if low < 0 else high
    raise InvalidRequestError(field, f"token id {bad} at position {list(ids).index(bad)} is "
                              f"outside the vocabulary [0, {vocab_size})")


def check_fits(prompt_len: int, max_new_tokens: int, context_len: int,
               max_total_tokens: int) -> None:
    """Prompt and output fit both the context window and the KV pool."""
    if prompt_len >= context_len:
        raise InvalidRequestError(
            "input_ids", f"prompt of {prompt_len} tokens is too long: the context length is "
            f"{context_len} tokens, prompt and output included")
    for limit, what in ((context_len, "the context length"),
                        (max_total_tokens, "the KV cache capacity")):
        if prompt_len + max_new_tokens > limit:
            raise InvalidRequestError(
                "max_new_tokens", f"prompt of {prompt_len} tokens + max_new_tokens "
                f"{max_new_tokens} = {prompt_len + max_new_tokens} exceeds {what} of {limit}")


def check_tokenized_request(request: TokenizedRequest, info: ModelInfo,
                            limits: SamplingLimits = HARD_LIMITS) -> None:
    """The whole request as an internal entry receives it; raises InvalidRequestError naming
    the first field at fault."""
    check_rid(request.rid)
    check_cache_salt(request.cache_salt)
    check_token_ids(request.input_ids, info.vocab_size)
    request.sampling.validate(info.vocab_size, limits)
    check_fits(len(request.input_ids), request.sampling.max_new_tokens, info.context_len,
               info.max_total_tokens)


# Trailing metadata of a stream a service ends because a message named requests it refuses
# (the worker's Execute, for a plan it refused whole): the ids, so the peer can fail those
# requests alone. Binary, since an id may hold any printable character; one id per line.
REFUSED_RIDS_KEY = "radixmesh-refused-rids-bin"


def encode_refused_rids(rids: Sequence[str]) -> tuple[tuple[str, bytes], ...]:
    return ((REFUSED_RIDS_KEY, "\n".join(rids).encode()),)


def decode_refused_rids(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[str, ...]:
    """The ids `encode_refused_rids` put in `metadata` (e.g. an AioRpcError's trailing
    metadata), or () when it holds none."""
    for key, value in metadata or ():
        if key == REFUSED_RIDS_KEY and isinstance(value, bytes) and value:
            return tuple(value.decode(errors="replace").split("\n"))
    return ()
