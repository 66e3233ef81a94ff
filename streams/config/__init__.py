"""Swatch's configuration: frozen pydantic-settings models read from ``SWATCH_*`` variables.

Sources, strongest first: keyword arguments (tests, the CLI), ``SWATCH_*`` environment variables,
an optional YAML file named by ``SWATCH_CONFIG_FILE`` (same nesting as the models: ``kafka:
{bootstrap: ...}``), then the defaults below.

Every variable is ``SWATCH_<SECTION>_<FIELD>`` in upper case, derived in one place
(:func:`env_var_name`) and listed by :data:`ENV_VARS`; ``swatch config env`` prints them with their
descriptions. Lists are comma-separated (or a JSON array), mappings are ``key=value`` pairs
separated by commas (or a JSON object). Invalid values raise :class:`ConfigError` naming the
variable and what it expects.
"""

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
from streams.config.settings import ENV_VARS, EnvVar, Settings, load_settings, settings_env

__all__ = [
    "CONFIG_FILE_VAR",
    "ENV_PREFIX",
    "ENV_VARS",
    "BatchSettings",
    "EnvVar",
    "FetchSettings",
    "KafkaSettings",
    "LogSettings",
    "ModelSettings",
    "RedisSettings",
    "RegistrySettings",
    "ReviewSettings",
    "Settings",
    "TopicSettings",
    "WorkerSettings",
    "env_var_name",
    "load_settings",
    "mask_extra",
    "mask_url_password",
    "settings_env",
]
