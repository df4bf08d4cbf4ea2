"""Settings from the environment: strict parsers, secrets from files, JSON settings."""

from __future__ import annotations

import json

import pytest

from vault.env import EnvError, env_bool, env_int, env_json, env_list, env_secret


def test_env_bool_accepts_only_the_usual_words() -> None:
    assert env_bool("X", environ={"X": "Yes"}) is True
    assert env_bool("X", environ={"X": "off"}) is False
    assert env_bool("X", True, environ={}) is True
    with pytest.raises(EnvError, match="X must be one of"):
        env_bool("X", environ={"X": "maybe"})


def test_env_int_checks_bounds_and_names_the_variable() -> None:
    assert env_int("N", 5, environ={}) == 5
    assert env_int("N", 5, minimum=1, environ={"N": " 7 "}) == 7
    with pytest.raises(EnvError, match="N must be at most 10"):
        env_int("N", 5, maximum=10, environ={"N": "11"})
    with pytest.raises(EnvError, match="N must be a whole number"):
        env_int("N", 5, environ={"N": "ten"})


def test_env_list_splits_on_commas() -> None:
    assert env_list("L", ["a"], environ={"L": " x, ,y "}) == ["x", "y"]
    assert env_list("L", ["a"], environ={}) == ["a"]


def test_env_secret_reads_a_file_and_never_both(tmp_path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret-value\n")
    assert env_secret("S", environ={"S_FILE": str(secret_file)}) == "s3cret-value"
    assert env_secret("S", environ={"S": "direct"}) == "direct"
    assert env_secret("S", environ={}) is None
    with pytest.raises(EnvError, match="not both"):
        env_secret("S", environ={"S": "a", "S_FILE": str(secret_file)})
    with pytest.raises(EnvError, match="cannot be read") as caught:
        env_secret("S", environ={"S_FILE": str(tmp_path / "missing")})
    assert "s3cret" not in str(caught.value)


def test_env_json_reads_the_variable_or_a_file(tmp_path) -> None:
    config = {"local": {"BACKEND": "kms_plugins.local.LocalKeyBackend", "OPTIONS": {}}}
    assert env_json("J", {}, environ={"J": json.dumps(config)}) == config
    path = tmp_path / "backends.json"
    path.write_text(json.dumps(config))
    assert env_json("J", {}, environ={"J_FILE": str(path)}) == config
    assert env_json("J", {"d": 1}, environ={}) == {"d": 1}
    path.write_text("{oops")
    with pytest.raises(EnvError, match="J_FILE is not valid JSON"):
        env_json("J", {}, environ={"J_FILE": str(path)})
