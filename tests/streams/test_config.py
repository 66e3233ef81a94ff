"""Configuration: defaults, SWATCH_* parsing, YAML, precedence, secrets, and helpful errors."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.config import CONFIG_FILE_VAR, ENV_VARS, Settings, env_var_name, load_settings, mask_url_password
from streams.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_swatch_env")


def test_defaults_need_no_configuration() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap is None and settings.redis.url is None
    assert settings.topics.attributes == "listing-attributes"
    assert settings.batch.max_size is None  # chosen per device: streams.batcher.default_max_size
    assert settings.fetch.allow_networks == ()


def test_every_variable_follows_the_naming_rule() -> None:
    assert "SWATCH_KAFKA_BOOTSTRAP" in ENV_VARS and "SWATCH_REDIS_URL" in ENV_VARS
    for name, var in ENV_VARS.items():
        assert name == env_var_name(var.section, var.field)
        assert var.description, f"{name} has no description"


def test_environment_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWATCH_KAFKA_BOOTSTRAP", "k0:9092,k1:9092")
    monkeypatch.setenv("SWATCH_BATCH_MAX_SIZE", "64")
    monkeypatch.setenv("SWATCH_MODEL_THRESHOLDS", "colour=0.8, pattern=0.9")
    monkeypatch.setenv("SWATCH_FETCH_ALLOW_NETWORKS", "127.0.0.0/8,::1/128")
    monkeypatch.setenv("SWATCH_KAFKA_EXTRA", '{"client.rack": "eu-west-1a"}')
    monkeypatch.setenv("SWATCH_REGISTRY_AUTO_REGISTER", "false")
    settings = load_settings()
    assert settings.kafka.bootstrap == "k0:9092,k1:9092"
    assert settings.batch.max_size == 64
    assert settings.model.thresholds == {"colour": 0.8, "pattern": 0.9}
    assert settings.fetch.allow_networks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert settings.kafka.extra == {"client.rack": "eu-west-1a"}
    assert settings.registry.auto_register is False


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SWATCH_BATCH_MAX_SIZE", "0", "greater than or equal to 1"),
        ("SWATCH_BATCH_MAX_SIZE", "lots", "valid integer"),
        ("SWATCH_KAFKA_BOOTSTRAP", "localhost", "not host:port"),
        ("SWATCH_REDIS_URL", "http://redis:6379", "redis://"),
        ("SWATCH_MODEL_THRESHOLDS", "colour=1.5", "less than or equal to 1"),
        ("SWATCH_MODEL_THRESHOLDS", "colour", "not key=value"),
        ("SWATCH_KAFKA_EXTRA", "{broken", "not valid JSON"),
        ("SWATCH_FETCH_ALLOW_NETWORKS", "10.0.0.0/33", "network"),
        ("SWATCH_MODEL_DEVICE", "tpu", "'auto', 'cpu' or 'cuda'"),
    ],
)
def test_invalid_values_name_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert name in message
    assert expected in message


def test_sasl_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWATCH_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match=r"SWATCH_KAFKA_SASL_MECHANISM.*SWATCH_KAFKA_SASL_USERNAME"):
        load_settings()
    monkeypatch.setenv("SWATCH_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SWATCH_KAFKA_SASL_USERNAME", "swatch")
    monkeypatch.setenv("SWATCH_KAFKA_SASL_PASSWORD", "hunter2")
    settings = load_settings()
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2"


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWATCH_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("SWATCH_REGISTRY_BASIC_AUTH", "user:s3cret")
    monkeypatch.setenv("SWATCH_REDIS_URL", "redis://default:redispw@redis:6379/0")
    monkeypatch.setenv("SWATCH_KAFKA_EXTRA", "sasl.oauthbearer.client.secret=oauthpw,client.rack=r1")
    settings = load_settings()
    shown = str(settings.redacted()) + repr(settings) + str(settings)
    assert "client.rack" in shown and "r1" in shown
    for secret in ("hunter2", "s3cret", "redispw", "oauthpw"):
        assert secret not in shown
    assert settings.redacted()["redis"]["url"] == "redis://default:****@redis:6379/0"
    assert ENV_VARS["SWATCH_KAFKA_SASL_PASSWORD"].secret


def test_secret_values_are_not_echoed_in_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "swatch.yaml"
    config.write_text("kafka:\n  ssl_key_password: [not, a, string]\n")
    monkeypatch.setenv(CONFIG_FILE_VAR, str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "<secret>" in str(caught.value) and "not" not in str(caught.value).split("=")[1][:20]


def test_yaml_file_and_environment_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "swatch.yaml"
    config.write_text("kafka:\n  bootstrap: from-yaml:9092\n  group_id: yaml-group\nbatch:\n  max_size: 8\n")
    monkeypatch.setenv(CONFIG_FILE_VAR, str(config))
    monkeypatch.setenv("SWATCH_KAFKA_BOOTSTRAP", "from-env:9092")
    settings = load_settings()
    assert settings.kafka.bootstrap == "from-env:9092"  # environment beats the file
    assert settings.kafka.group_id == "yaml-group"  # the file fills what the environment leaves
    assert settings.batch.max_size == 8
    assert load_settings(batch={"max_size": 2}).batch.max_size == 2  # keywords beat both


def test_yaml_errors_say_which_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "swatch.yaml"
    config.write_text("kafka:\n  bootstrapp: typo:9092\n")
    monkeypatch.setenv(CONFIG_FILE_VAR, str(config))
    with pytest.raises(ConfigError, match=r"kafka\.bootstrapp in .*swatch\.yaml"):
        load_settings()
    monkeypatch.setenv(CONFIG_FILE_VAR, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()


def test_unknown_variables_warn_with_a_suggestion(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWATCH_KAFKA_BOOTSTRAPS", "typo:9092")
    with caplog.at_level(logging.WARNING, logger="streams.config"):
        load_settings()
    assert "did you mean SWATCH_KAFKA_BOOTSTRAP" in caplog.text


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.batch.max_size = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Settings.model_validate({"batch": {"max_size": 8, "surprise": 1}})


def test_mask_url_password() -> None:
    assert mask_url_password("redis://redis:6379/0") == "redis://redis:6379/0"
    assert mask_url_password("rediss://u:p@h:6380/1") == "rediss://u:****@h:6380/1"


def test_settings_env_makes_another_process_load_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.config import settings_env

    original = Settings(
        kafka={
            "bootstrap": "k1:9092,k2:9092",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": "p@ss",
            "extra": {"client.rack": "a"},
        },
        redis={"url": "redis://:pw@r:6379/0"},
        fetch={"allow_networks": ["127.0.0.0/8", "10.0.0.0/8"]},
        model={"thresholds": {"colour": 0.8}},
        review={"behind_proxy": True, "port": 9000},
    )
    env = settings_env(original)
    for name in list(os.environ):
        if name.startswith("SWATCH_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings() == original
    assert "SWATCH_KAFKA_SASL_PASSWORD" not in settings_env(original, secrets=False)
