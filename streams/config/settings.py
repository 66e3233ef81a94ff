"""The whole configuration: the settings model, its ``SWATCH_*`` variables, and loading with clear errors."""

from __future__ import annotations

import difflib
import json
import logging
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from streams.config.names import CONFIG_FILE_VAR, ENV_PREFIX, env_var_name, mask_extra, mask_url_password
from streams.config.sections import (
    BatchSettings,
    FetchSettings,
    KafkaSettings,
    LogSettings,
    ModelSettings,
    RedisSettings,
    RegistrySettings,
    ReviewSettings,
    TopicSettings,
    WorkerSettings,
)
from streams.errors import ConfigError

logger = logging.getLogger(__name__)


class Settings(BaseSettings):
    """All of Swatch's configuration, resolved from keywords, environment, YAML file and defaults."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    registry: RegistrySettings = RegistrySettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    model: ModelSettings = ModelSettings()
    batch: BatchSettings = BatchSettings()
    fetch: FetchSettings = FetchSettings()
    worker: WorkerSettings = WorkerSettings()
    review: ReviewSettings = ReviewSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keywords, then SWATCH_* variables, then the YAML file: nothing else is read."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, _SwatchEnvSource(settings_cls)]
        config_file = os.environ.get(CONFIG_FILE_VAR)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    def redacted(self) -> dict[str, Any]:
        """The resolved settings as plain data with every secret masked (for `swatch config show`)."""
        data = self.model_dump(mode="json")
        if self.redis.url:
            data["redis"]["url"] = mask_url_password(self.redis.url)
        data["kafka"]["extra"] = mask_extra(self.kafka.extra)
        return data


@dataclass(frozen=True)
class EnvVar:
    """One ``SWATCH_*`` variable: the setting it fills and what it means."""

    name: str
    section: str
    field: str
    description: str
    secret: bool


def _build_env_vars() -> dict[str, EnvVar]:
    table: dict[str, EnvVar] = {}
    for section, section_field in Settings.model_fields.items():
        model = section_field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"settings section {section} must be a model")
        for name, info in model.model_fields.items():
            var = env_var_name(section, name)
            table[var] = EnvVar(var, section, name, info.description or "", _is_secret(info))
    return table


def _is_secret(info: FieldInfo) -> bool:
    return SecretStr in typing.get_args(info.annotation) or info.annotation is SecretStr


ENV_VARS: Mapping[str, EnvVar] = _build_env_vars()
_BY_PATH = {(var.section, var.field): var for var in ENV_VARS.values()}


def _split_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _parse_env_value(var: EnvVar, raw: str) -> Any:
    """Turn a variable's text into the shape its field expects (lists and mappings need parsing)."""
    section_model = Settings.model_fields[var.section].annotation
    annotation = section_model.model_fields[var.field].annotation  # type: ignore[union-attr]
    origin = typing.get_origin(annotation)
    if origin not in (dict, tuple, list):
        return raw
    text = raw.strip()
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{var.name}: not valid JSON ({exc.msg} at character {exc.pos}). {var.description}"
            ) from exc
    if origin is dict:
        pairs: dict[str, str] = {}
        for item in _split_list(text):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{var.name}: {item!r} is not key=value. {var.description}")
            pairs[key.strip()] = value.strip()
        return pairs
    return _split_list(text)


class _SwatchEnvSource(PydanticBaseSettingsSource):
    """Reads exactly the variables in :data:`ENV_VARS` into the nested settings shape."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Not used: :meth:`__call__` builds the whole mapping at once."""
        return None, field_name, False  # unused: __call__ builds the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, dict[str, Any]] = {}
        for var in ENV_VARS.values():
            raw = os.environ.get(var.name)
            if raw is not None:
                values.setdefault(var.section, {})[var.field] = _parse_env_value(var, raw)
        return values


def settings_env(settings: Settings, *, secrets: bool = True) -> dict[str, str]:
    """The ``SWATCH_*`` variables that make another process load the same settings (unset fields left out).

    Lists and mappings are written as JSON, booleans as ``true``/``false``; secrets are written in
    clear unless ``secrets`` is False (then they are left out), since the child needs them.
    """
    env: dict[str, str] = {}
    for var in ENV_VARS.values():
        value = getattr(getattr(settings, var.section), var.field)
        if value is None or (var.secret and not secrets):
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | tuple | dict):
            text = json.dumps(value if isinstance(value, dict) else [str(v) for v in value])
        else:
            text = str(value)
        env[var.name] = text
    return env


def load_settings(**overrides: Any) -> Settings:
    """Resolve the configuration, or raise :class:`ConfigError` with one line per bad setting."""
    _warn_unknown_variables()
    config_file = os.environ.get(CONFIG_FILE_VAR)
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{CONFIG_FILE_VAR}={config_file}: no such file; point it at a YAML file or unset it")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, config_file)) from exc


def _warn_unknown_variables() -> None:
    # A warning, not an error: Kubernetes injects <SERVICE>_PORT style variables for every service in
    # the namespace, and a service called swatch-redis would otherwise stop the worker from starting.
    for name in os.environ:
        if name.startswith(ENV_PREFIX) and name not in ENV_VARS and name != CONFIG_FILE_VAR:
            close = difflib.get_close_matches(name, list(ENV_VARS), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; `swatch config env` lists the known ones"
            logger.warning("ignoring unknown variable %s%s", name, hint)


def _explain(exc: ValidationError, config_file: str | None) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        var = _BY_PATH.get((loc[0], loc[1])) if len(loc) >= 2 else None
        if var is None:
            where = ".".join(loc) or "settings"
            origin = f" in {config_file}" if config_file else ""
            lines.append(f"  {where}{origin}: {error['msg']}")
            continue
        shown = "<secret>" if var.secret else repr(error.get("input"))
        origin = var.name if var.name in os.environ else f"{var.section}.{var.field} in {config_file or 'arguments'}"
        lines.append(f"  {origin} = {shown}: {error['msg']}. Expected: {var.description} Fix it or unset {var.name}.")
    return "\n".join(lines)
