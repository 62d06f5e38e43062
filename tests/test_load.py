"""config/load.py: the one loader of flags, environment and config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyforward.config.load import config_from, load_layers, load_settings
from pyforward.errors import ConfigError

ROUTE = 'listen = "127.0.0.1:0"\ntarget = "127.0.0.1:9"\nconnect_timeout = 3\n'


def test_the_config_file_is_the_flag_else_the_variable(tmp_path: Path) -> None:
    given, named = tmp_path / "given.toml", tmp_path / "named.toml"
    env = {"PYFORWARD_CONFIG": str(named)}
    assert config_from(given, env) == (given, "--config")
    assert config_from(None, env) == (named, "PYFORWARD_CONFIG")
    assert config_from(None, {"PYFORWARD_CONFIG": ""}) == (None, "")


def test_layers_read_the_file_the_variable_names(tmp_path: Path) -> None:
    path = tmp_path / "fwd.toml"
    path.write_text(ROUTE)
    layers = load_layers({"idle_timeout": 5.0}, None, {"PYFORWARD_CONFIG": str(path)})
    assert (layers.config, layers.file_source) == (path, str(path))
    (route,) = layers.settings().routes
    assert (route.policy.connect_timeout, route.policy.idle_timeout) == (3.0, 5.0)
    assert load_settings({}, path, {}) == load_layers({}, path, {}).settings()


def test_a_missing_file_is_named_by_where_it_came_from(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^PYFORWARD_CONFIG: config file {missing} does"):
        load_settings({}, None, {"PYFORWARD_CONFIG": str(missing)})
    with pytest.raises(ConfigError, match=rf"^--config: config file {missing} does not exist"):
        load_settings({}, missing, {})
