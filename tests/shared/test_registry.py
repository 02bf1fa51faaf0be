"""The one registry helper every pluggable part uses."""

from __future__ import annotations

import pytest

from radixmesh.services.scheduler.prefix_cache import PREFIX_CACHES
from radixmesh.services.worker.attention import ATTENTION_BACKENDS
from radixmesh.services.worker.model_config import UnsupportedModelError
from radixmesh.services.worker.models.registry import MODEL_CLASSES
from radixmesh.services.worker.worker_registry import WORKERS
from radixmesh.shared.registry import Registry, UnknownNameError


def test_lookup_and_decorator_registration() -> None:
    registry: Registry[type] = Registry("widget")

    @registry.register("round")
    class Round:
        pass

    registry.add("square", int)
    assert registry.get("round") is Round
    assert registry.names() == ["round", "square"]
    assert "round" in registry and "oval" not in registry
    assert registry.find("oval") is None
    assert len(registry) == 2


def test_unknown_name_lists_what_is_available() -> None:
    registry: Registry[int] = Registry("storage backend")
    registry.add("file", 1)
    with pytest.raises(UnknownNameError, match=r"unknown storage backend 'nfs'; available: file"):
        registry.get("nfs")


def test_a_name_is_registered_once() -> None:
    registry: Registry[int] = Registry("widget")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("a", 2)


def test_custom_error_type() -> None:
    registry: Registry[int] = Registry("model architecture", UnsupportedModelError)
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        registry.get("GPT2LMHeadModel")


def test_every_pluggable_part_uses_it() -> None:
    for registry in (ATTENTION_BACKENDS, WORKERS, MODEL_CLASSES, PREFIX_CACHES):
        assert isinstance(registry, Registry)
    assert "torch" in ATTENTION_BACKENDS
    assert WORKERS.names() == ["model", "null"]
    assert PREFIX_CACHES.names() == ["disabled", "radix"]
