"""PageAllocator: ids 1..num_pages, loud failures on double or foreign frees."""

import pytest

from radixmesh.services.scheduler.page_allocator import PageAllocator


def test_alloc_hands_out_distinct_ids_and_free_returns_them() -> None:
    allocator = PageAllocator(5)
    first = allocator.alloc(2)
    second = allocator.alloc(3)
    assert first is not None and second is not None
    assert sorted(first + second) == [1, 2, 3, 4, 5]
    assert allocator.num_free == 0
    allocator.free(first)
    assert allocator.num_free == 2
    assert sorted(allocator.alloc(2) or []) == sorted(first)


def test_page_zero_is_never_handed_out() -> None:
    allocator = PageAllocator(3)
    assert 0 not in (allocator.alloc(3) or [])


def test_alloc_beyond_free_returns_none_and_takes_nothing() -> None:
    allocator = PageAllocator(4)
    assert allocator.alloc(3) is not None
    assert allocator.alloc(2) is None
    assert allocator.num_free == 1
    assert allocator.alloc(1) is not None


def test_alloc_zero_is_empty() -> None:
    allocator = PageAllocator(2)
    assert allocator.alloc(0) == []
    assert allocator.num_free == 2


def test_double_free_raises() -> None:
    allocator = PageAllocator(3)
    pages = allocator.alloc(1)
    assert pages is not None
    allocator.free(pages)
    with pytest.raises(ValueError, match="twice"):
        allocator.free(pages)
    assert allocator.num_free == 3


def test_freeing_a_page_never_allocated_raises() -> None:
    allocator = PageAllocator(3)
    with pytest.raises(ValueError, match="twice"):
        allocator.free([2])


@pytest.mark.parametrize("page", [0, 4, -1])
def test_foreign_ids_raise(page: int) -> None:
    allocator = PageAllocator(3)
    allocator.alloc(3)
    with pytest.raises(ValueError, match="not in this pool"):
        allocator.free([page])


def test_pool_needs_a_page() -> None:
    with pytest.raises(ValueError):
        PageAllocator(0)


def test_negative_allocation_and_partial_bad_frees_change_nothing():
    allocator = PageAllocator(4)
    with pytest.raises(ValueError):
        allocator.alloc(-1)
    pages = allocator.alloc(2)
    with pytest.raises(ValueError):
        allocator.free([pages[0], 99])
    with pytest.raises(ValueError):
        allocator.free([pages[0], pages[0]])
    assert allocator.num_free == 2
    allocator.free(pages)
    assert allocator.num_free == 4
