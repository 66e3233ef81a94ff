"""The naming rule of Swatch's variables and the masking of secrets for display (no other imports)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "SWATCH_"
CONFIG_FILE_VAR = "SWATCH_CONFIG_FILE"


def env_var_name(section: str, field: str) -> str:
    """The environment variable that sets ``section.field`` (the single naming rule)."""
    return f"{ENV_PREFIX}{section}_{field}".upper()


_SECRET_WORDS = ("password", "secret", "token")


def mask_extra(properties: Mapping[str, str]) -> dict[str, str]:
    """Pass-through librdkafka properties with secret-looking values (passwords, secrets, tokens) masked."""
    return {key: "****" if any(w in key.lower() for w in _SECRET_WORDS) else value for key, value in properties.items()}


def mask_url_password(url: str) -> str:
    """Replace the password in a URL's user-info with asterisks, for display."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:****@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
