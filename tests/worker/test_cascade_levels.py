"""The cascade's two levels of page lists (flashinfer_cascade.split_levels), on CPU: a group's
shared pages once, each row's own pages after them, together every page of every row."""

from __future__ import annotations

import torch

from radixmesh.kernels.page_indices import flatten_page_table
from radixmesh.services.worker.attention.flashinfer_cascade import split_levels
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.prefix_groups import PrefixGroups

PAGE = 16


def decode_batch(tables: list[list[int]], seq_lens: list[int]) -> ForwardBatch:
    width = max(map(len, tables))
    rows = [table + [0] * (width - len(table)) for table in tables]
    count = len(tables)

    def ints(values: list[int], dtype: torch.dtype = torch.int32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype)

    return ForwardBatch(
        mode=ForwardMode.DECODE, input_ids=ints([0] * count, torch.int64),
        positions=ints([n - 1 for n in seq_lens], torch.int64),
        out_cache_loc=ints([0] * count, torch.int64), seq_lens=ints(seq_lens),
        extend_lens=ints([1] * count), extend_starts=ints(list(range(count))),
        page_table=ints(rows), logits_indices=ints(list(range(count)), torch.int64),
        seq_lens_cpu=seq_lens, extend_lens_cpu=[1] * count, num_extends=0, attn_backend=None,
        kv_pool=None)


def test_levels_hold_each_rows_pages_exactly_once():
    prefix_a, prefix_b = list(range(100, 110)), list(range(200, 206))
    tables = ([[7, 8, 9]]
              + [prefix_a + [300 + i, 310 + i] for i in range(4)]
              + [[11, 12]]
              + [prefix_b + [400 + i] for i in range(5)])
    seq_lens = [40] + [11 * PAGE + 5] * 4 + [20] + [6 * PAGE + 1] * 5
    groups = PrefixGroups([(1, 5), (6, 11)], [10, 6])
    batch = decode_batch(tables, seq_lens)

    shared, skip, own = split_levels(batch, groups, [-(-n // PAGE) for n in seq_lens], PAGE)

    assert shared.qo_indptr.tolist() == [0, 4, 9]
    assert shared.kv_indptr.tolist() == [0, 10, 16]
    assert shared.kv_indices.tolist() == prefix_a + prefix_b
    assert shared.kv_last_page_len.tolist() == [PAGE, PAGE]
    assert shared.members.tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    flat = flatten_page_table(batch.page_table, batch.seq_lens, PAGE, sum(own), skip).tolist()
    ends = [sum(own[:i + 1]) for i in range(len(own))]
    own_pages = [flat[end - count:end] for end, count in zip(ends, own, strict=True)]
    for row, table in enumerate(tables):
        group = next((g for g, (b, e) in enumerate(groups.bounds) if b <= row < e), None)
        shared_part = [] if group is None else \
            shared.kv_indices.tolist()[shared.kv_indptr[group]:shared.kv_indptr[group + 1]]
        assert shared_part + own_pages[row] == table[:-(-seq_lens[row] // PAGE)]


def test_a_batch_all_in_groups_needs_no_member_list():
    tables = [list(range(50, 60)) + [70 + i] for i in range(4)]
    groups = PrefixGroups([(0, 4)], [10])
    shared, skip, own = split_levels(decode_batch(tables, [10 * PAGE + 2] * 4), groups,
                                     [11] * 4, PAGE)
    assert shared.members is None
    assert skip.tolist() == [10] * 4
    assert own == [1] * 4
