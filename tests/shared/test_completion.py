"""The one accumulator of a request's deltas, over typed deltas and the client's dict chunks."""

from __future__ import annotations

from radixmesh.client import Completion as ClientCompletion
from radixmesh.client import GenerateChunk
from radixmesh.shared.completion import Completion, TextCompletion
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, Usage


def test_deltas_add_up_and_the_last_one_ends_it() -> None:
    completion = TextCompletion("r")
    completion.add(TextDelta("r", "ab", [1, 2]))
    assert not completion.finished
    finish, usage = FinishReason(FinishKind.LENGTH), Usage(3, 3, 0)
    completion.add(TextDelta("r", "", [3], finish, usage))
    assert (completion.text, completion.token_ids) == ("ab", [1, 2, 3])
    assert completion.finish is finish and completion.usage is usage and completion.finished


def test_the_client_keeps_its_dict_shaped_finish_and_usage() -> None:
    assert ClientCompletion is Completion
    completion = ClientCompletion("r")
    completion.add(GenerateChunk("r", [4], "x"))
    completion.add(GenerateChunk("r", [], "y", {"type": "stop"}, {"prompt_tokens": 1}))
    assert completion.text == "xy" and completion.finish == {"type": "stop"}
    assert completion.usage == {"prompt_tokens": 1}
