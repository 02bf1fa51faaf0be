"""HiCacheConfig: SGLang's flags, their defaults, and refusals that name the flag."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.shared.cli_args import add_config_arguments, config_from_args
from radixmesh.shared.peers import DEFAULT_PORTS


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADIXMESH_HOME", str(tmp_path))
    config = HiCacheConfig()
    assert (config.host, config.port, config.metrics_port) == ("127.0.0.1", 30040, 0)
    assert DEFAULT_PORTS["hicache"] == 30040
    assert config.hicache_storage_dir == str(tmp_path / "hicache")
    assert config.hicache_storage_backend is None
    assert config.host_pool_bytes is None and config.storage_capacity_bytes is None


def test_sizes_are_decimal_gigabytes() -> None:
    config = HiCacheConfig(hicache_size=30, hicache_storage_size=1.5)
    assert config.host_pool_bytes == 30 * 10**9
    assert config.storage_capacity_bytes == 1_500_000_000


def test_flags_parse() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, HiCacheConfig)
    args = parser.parse_args(["--hicache-ratio", "3", "--hicache-storage-backend", "file",
                              "--hicache-storage-dir", "/tmp/l3", "--metrics-port", "9100"])
    config = config_from_args(HiCacheConfig, args)
    assert (config.hicache_ratio, config.hicache_storage_backend) == (3.0, "file")
    assert (config.hicache_storage_dir, config.metrics_port) == ("/tmp/l3", 9100)
    with pytest.raises(SystemExit):
        parser.parse_args(["--hicache-storage-backend", "nfs"])
    parser.format_help()  # help texts with a literal % must format


@pytest.mark.parametrize(("options", "flag"), [
    ({"port": 70000}, "--port"),
    ({"metrics_port": -1}, "--metrics-port"),
    ({"hicache_ratio": 0}, "--hicache-ratio"),
    ({"hicache_size": -1}, "--hicache-size"),
    ({"hicache_storage_backend": "nfs"}, "--hicache-storage-backend"),
    ({"hicache_storage_size": 0}, "--hicache-storage-size"),
])
def test_bad_values_name_their_flag(options: dict[str, object], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        HiCacheConfig(**options)  # type: ignore[arg-type]
