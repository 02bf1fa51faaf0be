"""Named implementations chosen by a flag: attention backends, model workers, model classes,
prefix caches, storage backends.

Each kind of pluggable part has one `Registry`; an implementation registers under the name its
flag value spells, and a second implementation is one new file that registers itself. An
unknown name is an error that lists what is available, so a typo in a flag reads clearly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

Entry = TypeVar("Entry")


class UnknownNameError(ValueError):
    """No implementation is registered under the name asked for."""


class Registry(Generic[Entry]):
    """Invariants: names are unique (registering a taken name raises); lookups never create.

    `kind` names the part in errors ("attention backend", "storage backend").
    """

    def __init__(self, kind: str, error: type[Exception] = UnknownNameError) -> None:
        self.kind = kind
        self._error = error
        self._entries: dict[str, Entry] = {}

    def register(self, name: str) -> Callable[[Entry], Entry]:
        """Decorator form: `@BACKENDS.register("file")` above a class or factory."""
        def add(entry: Entry) -> Entry:
            self.add(name, entry)
            return entry
        return add

    def add(self, name: str, entry: Entry) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise self._error(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def find(self, name: str) -> Entry | None:
        """The entry, or None where nothing is registered under `name` (an optional part)."""
        return self._entries.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
