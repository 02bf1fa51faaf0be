"""The file L3 backend on a directory several backends share, as the hicache services of a
mesh's data-parallel replicas do: what one writes the others find and read whole, what one
removes is a miss for the others, a start never clears another's write in flight, and writers
in other processes racing on the same pages never let a reader see a torn page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from radixmesh.services.hicache.storage import StorageStats
from radixmesh.services.hicache.storage.file_backend import TEMP_PREFIX
from tests.hicache.pages import KEYS, PAGE_FILE_BYTES, BackendFactory, payload

CHURN_KEYS = 8
CHURN_ROUNDS = 150
# Another process writing the first CHURN_KEYS pages over and over (each dropped, then written
# anew: a fresh temp file renamed into place), reading each back as it goes.
WRITER = f"""
import sys
from radixmesh.services.hicache.storage import FileStorageBackend
from tests.hicache.pages import KEYS, ROOT, payload
backend = FileStorageBackend(sys.argv[1], ROOT, capacity_bytes=1 << 20)
for _ in range({CHURN_ROUNDS}):
    for index in range({CHURN_KEYS}):
        backend.delete(KEYS[index])
        assert backend.put(KEYS[index], payload(index))
        assert backend.get(KEYS[index]) in (None, payload(index))
assert backend.stats.corrupt_removed == 0, backend.stats
backend.close()
"""


def test_a_page_one_backend_writes_is_found_and_read_by_another(
        make_backend: BackendFactory) -> None:
    writer, reader = make_backend(), make_backend()  # both open before any page exists
    for index in range(3):
        assert writer.put(KEYS[index], payload(index))
    assert reader.contains_prefix(KEYS[:5]) == 3
    assert reader.get(KEYS[1]) == payload(1) and reader.get(KEYS[2]) == payload(2)
    assert reader.get(KEYS[3]) is None
    assert reader.stats == StorageStats(hits=2, misses=1)
    assert reader.usage().num_files == 3 and reader.usage().bytes_used == 3 * PAGE_FILE_BYTES
    # A page both write is one file, whole, whoever wrote last.
    assert reader.put(KEYS[0], payload(0)) and writer.get(KEYS[0]) == payload(0)


def test_a_page_one_backend_removes_is_a_miss_for_the_other(
        make_backend: BackendFactory) -> None:
    first, second = make_backend(), make_backend()
    first.put(KEYS[0], payload(0))
    first.put(KEYS[1], payload(1))
    assert second.contains_prefix(KEYS[:2]) == 2
    assert first.delete(KEYS[0])
    assert second.get(KEYS[0]) is None  # gone: a miss, dropped from its index
    assert second.contains_prefix(KEYS[:2]) == 0
    assert second.usage().num_files == 1 and second.get(KEYS[1]) == payload(1)


def test_a_start_beside_an_open_backend_leaves_temp_files_alone(
        make_backend: BackendFactory, l3_dir: Path) -> None:
    first = make_backend()
    in_flight = l3_dir / f"{TEMP_PREFIX}{KEYS[0].hex()}-abc123"  # first's write, say
    in_flight.write_bytes(b"half a page")
    second = make_backend()
    assert in_flight.exists()
    first.close()
    second.close()
    make_backend()  # alone on the directory: what is left is a write that died
    assert not in_flight.exists()


def test_writers_in_other_processes_never_let_a_reader_see_a_torn_page(
        make_backend: BackendFactory, l3_dir: Path) -> None:
    reader = make_backend()
    root = Path(__file__).resolve().parents[2]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(l3_dir)], cwd=root)
               for _ in range(2)]
    reads = 0
    while any(writer.poll() is None for writer in writers):
        for index in range(CHURN_KEYS):
            assert reader.get(KEYS[index]) in (None, payload(index))
            reads += 1
    assert [writer.wait() for writer in writers] == [0, 0]
    assert reads > 0 and reader.stats.corrupt_removed == 0, reader.stats
    assert reader.contains_prefix(KEYS[:CHURN_KEYS]) == CHURN_KEYS
    assert [reader.get(KEYS[index]) for index in range(CHURN_KEYS)] == \
        [payload(index) for index in range(CHURN_KEYS)]
    assert not [path for path in l3_dir.iterdir() if path.name.startswith(TEMP_PREFIX)]
