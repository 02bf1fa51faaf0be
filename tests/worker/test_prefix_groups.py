"""Finding decode rows that share leading KV pages (the cascade attention's groups)."""

from __future__ import annotations

import pytest

from radixmesh.services.worker.prefix_groups import PrefixGrouper, PrefixGroups
from radixmesh.services.worker.request_state import WorkerRequest
from radixmesh.shared.sampling_params import SamplingParams

PAGE = 16


def request(rid: str, pages: list[int]) -> WorkerRequest:
    return WorkerRequest(rid=rid, token_ids=[], num_prompt_tokens=0, kv_len=0,
                         sampling=SamplingParams(), seed=0, slot=0, page_table=list(pages))


def rows(tables: list[list[int]], starts: list[int] | None = None
         ) -> tuple[list[WorkerRequest], list[int]]:
    """Decodes whose KV before the step fills every page of their table but the last."""
    decodes = [request(f"r{i}", table) for i, table in enumerate(tables)]
    if starts is None:
        starts = [(len(table) - 1) * PAGE + 3 for table in tables]
    return decodes, starts


PREFIX = list(range(100, 140))  # 40 shared pages


def group_of(size: int, prefix: list[int], first_own: int) -> list[list[int]]:
    return [prefix + [first_own + 10 * i, first_own + 10 * i + 1] for i in range(size)]


def test_adjacent_rows_with_a_common_prefix_form_groups():
    tables = group_of(5, PREFIX, 1000) + [[7, 8, 9]] + group_of(4, list(range(200, 230)), 2000)
    groups = PrefixGrouper(PAGE).find(*rows(tables))
    assert groups == PrefixGroups([(0, 5), (6, 10)], [40, 30])
    assert groups.row_shared_pages(10) == [40] * 5 + [0] + [30] * 4
    assert groups.members == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert groups.leaders == [0, 6]
    assert groups.qo_indptr == [0, 5, 9]
    assert not groups.covers(10)


def test_the_group_shares_what_all_its_rows_share():
    tables = group_of(4, PREFIX, 1000)
    tables[2] = PREFIX[:25] + [555] + PREFIX[26:] + [1, 2]  # diverges at page 25
    groups = PrefixGrouper(PAGE).find(*rows(tables))
    assert groups is not None and groups.shared_pages == [25] and groups.covers(4)


def test_the_page_a_row_writes_is_never_shared():
    """Identical tables (one prompt sent four times): only pages full before the step count,
    so each row keeps its last page to itself."""
    tables = [PREFIX + [1, 2]] * 4
    decodes, _ = rows(tables)
    starts = [41 * PAGE + 5, 41 * PAGE + 5, 40 * PAGE, 40 * PAGE + 9]  # the third: page 40 opens
    groups = PrefixGrouper(PAGE).find(decodes, starts)
    assert groups is not None and groups.shared_pages == [40]


@pytest.mark.parametrize("size", [1, 2, 3])
def test_small_groups_are_not_worth_a_level(size):
    tables = group_of(size, PREFIX, 1000) + [[1], [2], [3]]
    assert PrefixGrouper(PAGE).find(*rows(tables)) is None


def test_grouping_must_save_a_share_of_the_reads():
    """Four rows sharing 2 pages of 40 each: too little saved for a second level."""
    tables = [[1, 2] + list(range(1000 * i, 1000 * i + 38)) for i in range(1, 5)]
    assert PrefixGrouper(PAGE).find(*rows(tables)) is None
    assert PrefixGrouper(PAGE, min_saved_share=0.01).find(*rows(tables)) is not None


def test_rows_not_side_by_side_do_not_group():
    tables = group_of(4, PREFIX, 1000)
    tables.insert(2, [5, 6, 7])
    assert PrefixGrouper(PAGE).find(*rows(tables)) is None


def test_common_lengths_are_kept_between_steps_and_follow_new_requests():
    grouper = PrefixGrouper(PAGE)
    tables = group_of(4, PREFIX, 1000)
    decodes, starts = rows(tables)
    assert grouper.find(decodes, starts).shared_pages == [40]
    # Next step: the same requests, and a new one in a member's place whose table diverges
    # early (it must not inherit the old request's length through a reused id).
    newcomer = request(decodes[3].rid, PREFIX[:30] + list(range(5000, 5012)))
    decodes[3] = newcomer
    starts = [start + 1 for start in starts]
    assert grouper.find(decodes, starts).shared_pages == [30]


def test_rows_with_no_full_page_stay_out():
    tables = [[1]] * 6
    assert PrefixGrouper(PAGE).find(*rows(tables, [3] * 6)) is None
