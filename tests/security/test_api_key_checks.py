"""The API-key rules alone (`shared/api_keys.py`) and how keys reach the front door's config:
repeatable `--api-key`, $RADIXMESH_API_KEY, never in a config's repr or in `up`'s argv from
the environment, and a warning for an open front door bound beyond loopback."""

from __future__ import annotations

import argparse
import logging

import pytest

from radixmesh.launcher.mesh_plan import config_to_argv
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.shared.api_keys import (
    API_KEY_ENV,
    ApiKeys,
    AuthenticationError,
    keys_from,
    may_abort,
    owner_of,
    presented_key,
    warn_if_open,
)
from radixmesh.shared.cli_args import add_config_arguments, config_from_args

KEYS = ("sk-one", "sk-two-longer")


def test_each_configured_key_authenticates_as_its_own_owner() -> None:
    keys = ApiKeys(KEYS)
    owners = [keys.authenticate(key) for key in KEYS]
    assert owners == [owner_of(key) for key in KEYS] and owners[0] != owners[1]
    assert all(key not in owner for key, owner in zip(KEYS, owners, strict=True))
    for presented in (None, "", "sk-on", "sk-one ", "sk-two-longer-still", "\ud800"):
        with pytest.raises(AuthenticationError):
            keys.authenticate(presented)
    assert "sk-one" not in repr(keys)


def test_without_keys_everyone_is_in_and_owns_nothing() -> None:
    assert ApiKeys(()).authenticate(None) is None
    assert ApiKeys(("",)).enabled is False  # an empty key switches nothing on


@pytest.mark.parametrize(("headers", "key"), [
    ({"authorization": "Bearer sk-one"}, "sk-one"),
    ({"authorization": "bearer  sk-one "}, "sk-one"),
    ({"x-api-key": "sk-one"}, "sk-one"),
    ({"authorization": "Basic c2stb25l"}, None),
    ({}, None),
])
def test_the_key_a_request_presents(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers.get) == key


def test_only_the_owner_may_abort_and_anyone_without_keys() -> None:
    mine, theirs = owner_of("a"), owner_of("b")
    assert may_abort(mine, mine) and not may_abort(mine, theirs)
    assert not may_abort(None, mine) and not may_abort(mine, None)
    assert may_abort(None, None)


def test_flags_win_over_the_environment() -> None:
    assert keys_from(KEYS, {API_KEY_ENV: "sk-env"}) == KEYS
    assert keys_from((), {API_KEY_ENV: "sk-env"}) == ("sk-env",)
    assert keys_from((), {API_KEY_ENV: ""}) == ()


def test_api_key_is_a_repeatable_flag_kept_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TokenizerConfig)
    config = config_from_args(TokenizerConfig, parser.parse_args(
        ["--api-key", KEYS[0], "--api-key", KEYS[1]]))
    assert config.api_key == KEYS and len(config.api_keys) == 2
    assert KEYS[0] not in repr(config)
    assert config_to_argv(config).count("--api-key") == 2  # `up` hands both on
    assert config_from_args(TokenizerConfig, parser.parse_args([])).api_key == ()
    assert TokenizerConfig(api_key="single").api_key == ("single",)
    monkeypatch.setenv(API_KEY_ENV, "sk-env")
    from_env = TokenizerConfig()
    assert from_env.api_keys.authenticate("sk-env") == owner_of("sk-env")
    assert "--api-key" not in config_to_argv(from_env)  # children read the variable instead


@pytest.mark.parametrize(("host", "keys", "warned"), [
    ("0.0.0.0", (), True), ("192.0.2.7", (), True), ("::", (), True),
    ("127.0.0.1", (), False), ("localhost", (), False), ("::1", (), False),
    ("0.0.0.0", KEYS, False),
])
def test_an_open_front_door_beyond_loopback_is_warned_about(
        caplog: pytest.LogCaptureFixture, host: str, keys: tuple[str, ...],
        warned: bool) -> None:
    with caplog.at_level(logging.WARNING):
        assert warn_if_open(ApiKeys(keys), host) is warned
    assert ("no API key" in caplog.text) is warned
