"""Penalty state on the device: counts, their lifecycle, and the penalized logits."""

from __future__ import annotations

import torch

from radixmesh.services.worker.sampling import PenaltyState, Sampler, SamplingBatch
from radixmesh.shared.sampling_params import SamplingParams as P

LOGITS = [2.0, -1.0, 0.5, -0.5, 3.0, 0.0]


def _apply(state: PenaltyState, logits: list[list[float]], slots: list[int],
           frequency: list[float], presence: list[float],
           repetition: list[float]) -> torch.Tensor:
    return state.apply(torch.tensor(logits), torch.tensor(slots), torch.tensor(frequency),
                       torch.tensor(presence), torch.tensor(repetition))


def test_penalties_follow_the_formulas_and_prompt_tokens_get_only_repetition() -> None:
    state = PenaltyState(max_slots=4, vocab_size=6, device="cpu")
    state.add(2, prompt_ids=[0, 1, 2], output_ids=[2, 2, 3])
    penalized = _apply(state, [LOGITS], [2], frequency=[0.5], presence=[0.25], repetition=[2.0])
    assert penalized.tolist() == [[
        2.0 / 2,                    # prompt only: repetition divides a positive logit
        -1.0 * 2,                   # prompt only: repetition multiplies a negative logit
        0.5 / 2 - 0.5 * 2 - 0.25,   # prompt and output twice
        -0.5 * 2 - 0.5 * 1 - 0.25,  # output once
        3.0, 0.0,                   # never seen
    ]]


def test_neutral_rows_come_back_bit_identical() -> None:
    state = PenaltyState(max_slots=2, vocab_size=6, device="cpu")
    state.add(0, [0, 1], [1, 4, 4])
    state.add(1, [3], [5])
    row = [*LOGITS[:5], float("-inf")]
    penalized = _apply(state, [row, row], [0, 1], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0])
    assert torch.equal(penalized[0], torch.tensor(row))
    assert penalized[1, 5] == float("-inf") and penalized[1, :5].tolist() == row[:5]


def test_record_counts_outputs_and_release_clears_the_slot() -> None:
    state = PenaltyState(max_slots=3, vocab_size=6, device="cpu")
    state.add(1, [0, 0, 5], [])
    for tokens in ([4, 2], [4, 4], [1, 2]):
        state.record(torch.tensor([1, 2]), torch.tensor(tokens))
    assert state.output_counts[1].tolist() == [0, 1, 0, 0, 2, 0]
    assert state.output_counts[2].tolist() == [0, 0, 2, 0, 1, 0]
    assert state.prompt_mask[1].tolist() == [True, False, False, False, False, True]
    state.release(1)
    assert not state.prompt_mask[1].any() and not state.output_counts[1].any()
    assert state.output_counts[2].sum() == 3


def test_re_adding_with_prior_output_rebuilds_the_recorded_counts() -> None:
    recorded = PenaltyState(max_slots=2, vocab_size=8, device="cpu")
    recorded.add(0, [7, 1], [])
    outputs = [3, 3, 6, 1, 3]
    for token in outputs:
        recorded.record(torch.tensor([0]), torch.tensor([token]))
    rebuilt = PenaltyState(max_slots=2, vocab_size=8, device="cpu")
    rebuilt.add(1, [5], [2, 2])  # a previous owner of the slot, replaced below
    rebuilt.add(1, [7, 1], outputs)
    assert torch.equal(rebuilt.output_counts[1], recorded.output_counts[0])
    assert torch.equal(rebuilt.prompt_mask[1], recorded.prompt_mask[0])


def test_sampler_allocates_penalty_state_only_when_needed_and_records_samples() -> None:
    sampler = Sampler(vocab_size=6, max_slots=4, device="cpu")
    sampler.add_request(0, P(), [1, 2], [])
    assert sampler.penalties is None
    sampler.add_request(3, P(presence_penalty=2.0, temperature=0), [0], [])
    assert sampler.penalties is not None
    logits = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.5, 0.0]] * 2)
    params = [P(), P(presence_penalty=2.0, temperature=0)]
    tokens = []
    for position in range(3):
        batch = SamplingBatch.build(params, [9, 9], [position] * 2, [0, 3], "cpu")
        tokens.append(int(sampler.sample(logits, batch)[1]))
    # Greedy under a presence penalty: each pick is pushed below the next candidate.
    assert tokens == [3, 4, 0]
    assert sampler.penalties.output_counts[3].tolist() == [1, 0, 0, 1, 1, 0]
    sampler.release_request(3)
    assert not sampler.penalties.output_counts[3].any()


def test_a_mixed_batch_matches_each_request_run_alone_through_penalties() -> None:
    requests = [P(temperature=0, repetition_penalty=1.8), P(top_k=20, frequency_penalty=1.0),
                P(top_p=0.8, temperature=0.7), P(min_p=0.1, presence_penalty=0.5),
                P(temperature=0), P(top_k=1)]
    prompts = [[1, 2, 3], [4], [5, 6], [], [7], [8, 9]]
    seeds, steps, vocab = [10, 11, 12, 13, 14, 15], 8, 64
    logits = torch.randn(len(requests), steps, vocab, generator=torch.Generator().manual_seed(2))

    def run(rows: list[int], slots: list[int]) -> torch.Tensor:
        sampler = Sampler(vocab, max_slots=8, device="cpu")
        for row, slot in zip(rows, slots, strict=True):
            sampler.add_request(slot, requests[row], prompts[row], [])
        out = []
        for step in range(steps):
            batch = SamplingBatch.build([requests[r] for r in rows], [seeds[r] for r in rows],
                                        [step] * len(rows), slots, "cpu")
            out.append(sampler.sample(logits[rows, step], batch))
        return torch.stack(out, dim=1)

    together = run([5, 3, 0, 4, 1, 2], [7, 0, 2, 1, 5, 3])
    for index, row in enumerate([5, 3, 0, 4, 1, 2]):
        assert torch.equal(together[index], run([row], [6])[0])


def test_a_retracted_request_resumes_with_the_same_tokens() -> None:
    params, prompt, vocab = P(temperature=1.5, frequency_penalty=1.5), [1, 2, 3], 16
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(4))

    def run(sampler: Sampler, positions: range) -> list[int]:
        tokens = []
        for pos in positions:
            batch = SamplingBatch.build([params], [77], [pos], [0], "cpu")
            tokens.append(int(sampler.sample(logits[pos:pos + 1], batch)[0]))
        return tokens

    original = Sampler(vocab, 2, "cpu")
    original.add_request(0, params, prompt, [])
    tokens = run(original, range(6))
    resumed = Sampler(vocab, 2, "cpu")
    resumed.add_request(0, params, prompt, tokens[:3])
    assert run(resumed, range(3, 6)) == tokens[3:]
