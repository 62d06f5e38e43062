"""Loading settings: flags, then PYFORWARD_* variables, then the config file, then defaults.

The one place the layers are gathered: which config file (`--config`, else
`PYFORWARD_CONFIG`), reading it, and handing all three to `build_settings`. `run`, its
reload, `check`, `install` and `status` all load through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyforward.config.model import Settings
from pyforward.config.schema import env_name
from pyforward.config.settings import build_settings, parse_config_text
from pyforward.errors import ConfigError


def read_config_file(path: Path | str, where: str = "--config") -> dict[str, Any]:
    """Read and parse a config file, turning I/O errors into one clear line that names
    where the path came from (`--config` or `PYFORWARD_CONFIG`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: {path} is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{where}: config file {path}: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: config file {path} is not UTF-8 text") from None
    return parse_config_text(text, str(path))


def config_from(config: Path | None, env: Mapping[str, str]) -> tuple[Path | None, str]:
    """The config file to read (`--config`, else `PYFORWARD_CONFIG`) and where it was named."""
    if config is not None:
        return config, "--config"
    if env.get(env_name("config")):
        return Path(env[env_name("config")]), env_name("config")
    return None, ""


@dataclass(frozen=True)
class Layers:
    """What settings are made of: the flags given, the environment, the config file's data
    (None without one) and its name for messages."""

    flags: Mapping[str, object]
    env: Mapping[str, str]
    file_data: Mapping[str, Any] | None = None
    file_source: str = "config file"
    config: Path | None = None  # the config file read, wherever it was named

    def settings(self) -> Settings:
        return build_settings(self.flags, self.env, self.file_data, self.file_source)


def load_layers(flags: Mapping[str, object], config: Path | None, env: Mapping[str, str]) -> Layers:
    """The flags, the environment, and the config file they name, read."""
    path, where = config_from(config, env)
    if path is None:
        return Layers(flags, env)
    return Layers(flags, env, read_config_file(path, where), str(path), path)


def load_settings(
    flags: Mapping[str, object], config: Path | None, env: Mapping[str, str]
) -> Settings:
    """Flags, then PYFORWARD_* variables, then the config file, then defaults."""
    return load_layers(flags, config, env).settings()


def load_config_only(path: Path) -> Settings:
    """The settings of a config file alone (no flags, no environment): what an installed
    service runs with. Its errors name the file only."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return build_settings({}, {}, parse_config_text(text, str(path)), str(path))
