"""Where ``AgentSettings`` values come from besides the flags: the environment and the config file.

Both are pydantic-settings sources (``settings_customise_sources`` of ``edge_agent.config.AgentSettings``
lists them): :class:`EnvironmentSource` reads ``FEDDST_<NAME>`` variables from a given mapping,
:class:`ConfigFileSource` a TOML (or YAML) file. Each converts its raw values to the field's scalar type
(read from the model's annotations) and names its origin when a value does not convert, e.g.
``--threads (from /etc/feddst/agent.toml): not an integer: 1.5``, so a bad value says where it came from
(pydantic's own merge forgets that). Deprecated names (:data:`DEPRECATED_NAMES`) are renamed here with a
:class:`~protocol.endpoint.DeprecatedSettingWarning`; where both names are given the new one wins.
"""

from __future__ import annotations

import tomllib
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource, InitSettingsSource

from protocol.endpoint import DeprecatedSettingWarning

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

DEPRECATED_NAMES = {"broker": "broker_url"}  # old setting name -> new (flags dict, file keys, env FEDDST_<OLD>)
Fields = Mapping[str, FieldInfo]


class AgentConfigError(ValueError):
    """A setting is missing or invalid; the message names it and says what to do."""


def flag_name(name: str) -> str:
    """The command-line spelling of a setting: ``max_packet`` -> ``--max-packet``."""
    return "--" + name.replace("_", "-")


def scalar_type(field: FieldInfo) -> type:
    """The field's value type without ``None``: ``int``, ``float``, ``bool`` or ``str`` (a ``Literal`` of
    strings is ``str``: its choices are checked by the model, with the model's message)."""
    annotation: Any = field.annotation
    if get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        return str
    return annotation if annotation in (int, float, bool) else str


def coerce(name: str, field: FieldInfo, value: Any, origin: str) -> Any:
    """A raw value (a string from the environment, anything from a file) as the field's scalar type."""
    where = f"{flag_name(name)} (from {origin})"
    kind = scalar_type(field)
    try:
        if kind is bool:
            return _boolean(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            return float(value)
    except ValueError as exc:
        raise AgentConfigError(f"{where}: {exc}") from exc
    if name == "partition" and isinstance(value, list | tuple) and len(value) == 2:
        return f"{value[0]}/{value[1]}"
    if not isinstance(value, str | int | float):
        raise AgentConfigError(f"{where}: expected a string, got {type(value).__name__}")
    return str(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def renamed(values: dict[str, Any], where: str, spell: Callable[[str], str] = str) -> dict[str, Any]:
    """``values`` with deprecated keys moved to their new names (a warning each; the new name wins)."""
    out = dict(values)
    for old, new in DEPRECATED_NAMES.items():
        if old in out:
            warnings.warn(f"{where}: setting {spell(old)} is deprecated, use {spell(new)} (same meaning)",
                          DeprecatedSettingWarning, stacklevel=4)
            value = out.pop(old)
            if out.get(new) is None:
                out[new] = value
    return out


def read_config_file(path: str | Path, fields: Fields) -> dict[str, Any]:
    """Settings from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file: keys are setting names (``_`` or
    ``-``), at top level or under an ``[agent]`` table; unknown keys are an error."""
    p = Path(path)
    if not p.is_file():
        raise AgentConfigError(f"--config: {p} does not exist (pass a TOML file, see docs/agent.md)")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise AgentConfigError(f"--config: {p} is YAML but PyYAML is not installed; "
                                       "`pip install pyyaml` or use a .toml file") from exc
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        else:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
    except AgentConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser error becomes a config error naming the file
        raise AgentConfigError(f"--config: cannot parse {p}: {exc}") from exc
    if not isinstance(data, dict):
        raise AgentConfigError(f"--config: {p} must hold a table of settings")
    if isinstance(data.get("agent"), dict):
        data = data["agent"]
    out: dict[str, Any] = {}
    for key, value in renamed({str(k).replace("-", "_"): v for k, v in data.items()}, str(p)).items():
        if key not in fields:
            raise AgentConfigError(f"--config: {p}: unknown setting {key!r}; known: " + ", ".join(sorted(fields)))
        out[key] = coerce(key, fields[key], value, str(p))
    return out


class ConfigFileSource(InitSettingsSource):
    """The ``--config`` file as a pydantic-settings source (below the environment, above the defaults)."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | Path) -> None:
        super().__init__(settings_cls, read_config_file(path, settings_cls.model_fields))


class EnvironmentSource(EnvSettingsSource):
    """``FEDDST_<NAME>`` variables (the model's ``env_prefix``) from ``environ``, not necessarily
    ``os.environ``; names are case-insensitive and empty values are ignored, as pydantic-settings does."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        fold: Callable[[str], str] = (lambda k: k) if self.case_sensitive else str.lower
        return {fold(k): v for k, v in self._environ.items() if v != ""}

    def _variable(self, name: str) -> str:
        return f"{self.env_prefix}{name}".upper()

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        raw = super().__call__()
        for old in DEPRECATED_NAMES:
            variable = self._variable(old)
            value = self.env_vars.get(variable if self.case_sensitive else variable.lower())
            if value is not None:
                raw[old] = value
        raw = renamed(raw, "environment", spell=self._variable)
        return {name: coerce(name, fields[name], value, "$" + self._variable(name)) for name, value in raw.items()}
