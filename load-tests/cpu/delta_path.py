#!/usr/bin/env python3
"""The per-token path downstream of a decode step, on the CPU, in-process: what each step's
new tokens cost on their way to the front door, at batch 1, 64, 256 and 1024 (issue 16).

For each batch size, that many requests are registered at a detokenizer (no stop strings, as
the null-worker workload sends), then steps of one new token a row are timed part by part
(median µs per step):
- `link_tokens`: the scheduler -> detokenizer batch over the wire, both ends (to protobuf,
  bytes, back), less the socket;
- `detokenize`: the detokenizer's round (incremental detokenization, stop strings, usage);
- `link_text`: the detokenizer -> front door batch over the wire, both ends.

It runs on whichever radixmesh the interpreter imports, so the same file measures a checkout
from before the batch encodings (it then uses the row-per-message form those had):

    python load-tests/cpu/delta_path.py [--steps 50] [--output-dir load-tests/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from radixmesh.bench.results import git_commit, write_record
from radixmesh.services.detokenizer.batch_detokenizer import BatchDetokenizer
from radixmesh.shared import wire
from radixmesh.shared.protos_gen import internal_pb2
from radixmesh.shared.requests import TextDelta, TokenDelta
from radixmesh.shared.token_batch import DetokenizeRegistration, TokenBatch
from radixmesh.shared.tokenizer import load_tokenizer

BATCHES = (1, 64, 256, 1024)
PARTS = ("link_tokens", "detokenize", "link_text")
FIRST_ID, SPAN = 300, 900  # ids of ordinary tokens of the default tiny model's tokenizer


def text_round_trip(texts: list[TextDelta]) -> list[TextDelta]:
    if hasattr(wire, "text_batch_to_proto"):
        data = wire.text_batch_to_proto(texts).SerializeToString()
        return wire.text_batch_from_proto(internal_pb2.TextBatch.FromString(data))
    data = internal_pb2.TextBatch(
        deltas=[wire.text_delta_to_proto(text) for text in texts]).SerializeToString()
    return [wire.text_delta_from_proto(d) for d in internal_pb2.TextBatch.FromString(data).deltas]


def token_round_trip(batch: TokenBatch) -> TokenBatch:
    data = wire.token_batch_to_proto(batch).SerializeToString()
    return wire.token_batch_from_proto(internal_pb2.TokenBatch.FromString(data))


def measure(batch_size: int, steps: int, tokenizer) -> dict[str, float]:
    core = BatchDetokenizer(tokenizer)
    rids = [f"req-{i}" for i in range(batch_size)]
    core.round(TokenBatch(registrations=[DetokenizeRegistration(rid, (), (FIRST_ID,), 1)
                                         for rid in rids]))
    samples: dict[str, list[float]] = {part: [] for part in PARTS}
    for step in range(steps):
        batch = TokenBatch(deltas=[TokenDelta(rid, [FIRST_ID + (step * 7 + row) % SPAN])
                                   for row, rid in enumerate(rids)])
        started = time.perf_counter()
        batch = token_round_trip(batch)
        decoded = time.perf_counter()
        texts = core.round(batch)
        detokenized = time.perf_counter()
        assert len(text_round_trip(texts)) == batch_size
        samples["link_tokens"].append(decoded - started)
        samples["detokenize"].append(detokenized - decoded)
        samples["link_text"].append(time.perf_counter() - detokenized)
    return {part: round(statistics.median(values) * 1e6, 1) for part, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="write the JSON there (default: print it only)")
    args = parser.parse_args()
    tokenizer = load_tokenizer(None)
    figures = {str(size): measure(size, args.steps, tokenizer) for size in BATCHES}
    record = {"what": "µs per decode step of the per-token path downstream of the step "
                      "(median), in-process", "device": "cpu", "cpu": platform.processor()
              or platform.machine(), "steps": args.steps, "batches": figures}
    print(json.dumps(record, indent=2))
    if args.output_dir is not None:
        # The commit of the package measured, which a before/after run puts on PYTHONPATH.
        write_record(record, "delta-path-cpu", args.output_dir, sys.argv,
                     commit=git_commit(Path(wire.__file__).parents[1]))


if __name__ == "__main__":
    main()
