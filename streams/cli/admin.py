"""Operator commands: configuration, topics, schemas, the local stack and the image server."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn
from urllib.parse import urlsplit

import typer

from streams.cli.common import (
    _guarded,
    _io,
    _settings,
    _table,
    _terminate_as_interrupt,
    _wait_for_interrupt,
    app,
    config_app,
    dev_app,
    schemas_app,
    topics_app,
)
from streams.codec import SCHEMA_NAMES, SchemaSet
from streams.config import CONFIG_FILE_VAR, ENV_VARS, Settings, load_settings, mask_extra, settings_env
from streams.errors import ConfigError
from streams.kafka import admin_config


@config_app.command("show")
def config_show(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the resolved configuration, secrets masked."""
    data = _settings().redacted()
    if as_json:
        _io.out.print_json(json.dumps(data))
        return
    table = _table("setting", "value", "variable", title="Swatch configuration")
    for var in ENV_VARS.values():
        table.add_row(f"{var.section}.{var.field}", json.dumps(data[var.section][var.field]), var.name)
    _io.out.print(table)


@config_app.command("env")
def config_env(
    *,
    configmap: Annotated[
        bool, typer.Option("--configmap", help="Print a Kubernetes ConfigMap of the non-secret settings instead.")
    ] = False,
    env_file: Annotated[
        bool,
        typer.Option("--env-file", help="Print the non-secret settings as a kustomize configMapGenerator env file."),
    ] = False,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="SWATCH_NAME=VALUE", help="A value for the output, as if exported (repeatable)."),
    ] = None,
    name: Annotated[str, typer.Option(help="The ConfigMap's name (--configmap).")] = "swatch-config",
    namespace: Annotated[str | None, typer.Option(help="The ConfigMap's namespace (--configmap).")] = None,
    all_values: Annotated[
        bool, typer.Option("--all", help="Also write settings left at their defaults (pins them).")
    ] = False,
) -> None:
    """List every SWATCH_* variable, or print the deployment's configuration (--configmap, --env-file).

    The deployment's configuration is the settings given by --set, the environment and the
    SWATCH_CONFIG_FILE, validated like any start-up, secrets left out (they belong in a Secret).
    """
    if not (configmap or env_file):
        if sets or all_values:
            _fail_config("--set and --all need --configmap or --env-file")
        table = _table("variable", "meaning", title=f"Swatch variables (a YAML file may be named by {CONFIG_FILE_VAR})")
        for var in ENV_VARS.values():
            table.add_row(var.name, var.description + (" [secret]" if var.secret else ""))
        _io.out.print(table)
        return
    if configmap and env_file:
        _fail_config("choose one of --configmap and --env-file")
    given = _parse_sets(sets or [])
    with _environment(given):
        settings = _deployment_settings()
        values = _deployment_values(settings, all_values=all_values)
        from_env = [n for n in values if n not in given and n in os.environ]
    command = ["swatch", "config", "env", "--configmap" if configmap else "--env-file"]
    if configmap:
        command += ["--name", name] + (["--namespace", namespace] if namespace else [])
    command += ["--all"] if all_values else []
    header = _generated_header(command, given, from_env, bool(os.environ.get(CONFIG_FILE_VAR)))
    if env_file:
        typer.echo(header + "".join(f"{var}={value}\n" for var, value in values.items()), nl=False)
        return
    import yaml

    metadata: dict[str, str] = {"name": name} | ({"namespace": namespace} if namespace else {})
    document = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": values}
    typer.echo(header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False), nl=False)


def _fail_config(message: str) -> NoReturn:
    _io.err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def _parse_sets(sets: list[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for item in sets:
        var, sep, value = item.partition("=")
        if not sep or var not in ENV_VARS:
            _fail_config(f"--set {item!r}: expected SWATCH_NAME=VALUE with a name `swatch config env` lists")
        if ENV_VARS[var].secret:
            _fail_config(f"--set {var}: a secret never goes in a ConfigMap; reference it from a Secret")
        given[var] = value
    return given


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """The process environment with ``values`` exported, restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for var, old in saved.items():
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old


def _deployment_settings() -> Settings:
    """The settings, validated with a placeholder for every secret (the deployment's Secret provides them)."""
    placeholders: dict[str, dict[str, str]] = {}
    for var in ENV_VARS.values():
        if var.secret:
            placeholders.setdefault(var.section, {})[var.field] = "<from a Secret>"
    try:
        return load_settings(**placeholders)
    except ConfigError as exc:
        _fail_config(str(exc))


def _deployment_values(settings: Settings, *, all_values: bool) -> dict[str, str]:
    """The non-secret variables to write: the ones set explicitly (or all of them), refusing embedded credentials."""
    env = settings_env(settings, secrets=False)
    values: dict[str, str] = {}
    for var, text in env.items():
        spec = ENV_VARS[var]
        if not (all_values or spec.field in getattr(settings, spec.section).model_fields_set):
            continue
        if "\n" in text or "\r" in text:
            _fail_config(f"{var}: a value with a line break cannot go in an env file or ConfigMap literal")
        values[var] = text
    if settings.redis.url and urlsplit(settings.redis.url).password is not None and "SWATCH_REDIS_URL" in values:
        _fail_config("SWATCH_REDIS_URL carries a password: put that URL in the Secret, not in a ConfigMap")
    if mask_extra(settings.kafka.extra) != settings.kafka.extra and "SWATCH_KAFKA_EXTRA" in values:
        _fail_config("SWATCH_KAFKA_EXTRA carries a secret-looking property: move it to a Secret")
    return values


def _generated_header(command: list[str], given: dict[str, str], from_env: list[str], from_file: bool) -> str:
    """Comment lines naming the command that regenerates the output (tests re-run it to check it is current)."""
    lines = [
        "# Generated from Swatch's settings model (streams/config) by the command below; edit the command,",
        "# not this file. Non-secret settings only: credentials come from Secrets.",
        "#   " + shlex.join(command) + (" \\" if given else ""),
    ]
    items = list(given.items())
    for index, (var, value) in enumerate(items):
        lines.append("#     --set " + shlex.quote(f"{var}={value}") + (" \\" if index < len(items) - 1 else ""))
    if from_env:
        lines.append("# with these values from the environment: " + ", ".join(from_env))
    if from_file:
        lines.append(f"# and values from {CONFIG_FILE_VAR}")
    return "\n".join(lines) + "\n"


# -- topics -------------------------------------------------------------------------------------


@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Partitions (default SWATCH_TOPICS_PARTITIONS).")
    ] = None,
    replication: Annotated[
        int | None,
        typer.Option(min=-1, help="Replication factor, -1 = broker default (default SWATCH_TOPICS_REPLICATION)."),
    ] = None,
) -> None:
    """Create the five topics; running it again only reports what already exists."""
    from streams.topics import create_topics, topic_specs

    settings = _settings()

    def body() -> None:
        specs = topic_specs(settings.topics, partitions=partitions, replication=replication)
        results = create_topics(admin_config(settings.kafka), specs)
        table = _table("topic", "partitions", "result", "purpose")
        for spec, result in zip(specs, results, strict=True):
            table.add_row(
                result.name, str(result.partitions), "created" if result.created else result.note, spec.purpose
            )
        _io.out.print(table)

    _guarded(body)


# -- schemas ------------------------------------------------------------------------------------


@schemas_app.command("list")
def schemas_list() -> None:
    """Show each event's schema, fingerprint and released versions."""
    schemas = _guarded(SchemaSet)
    table = _table("event", "record", "fingerprint (CRC-64-AVRO)", "released")
    for name in SCHEMA_NAMES:
        current = schemas.current(name)
        releases = ", ".join(s.release for s in schemas.released(name)) or "-"
        table.add_row(name, current.full_name, current.fingerprint.hex(), releases)
    _io.out.print(table)
    _io.out.print(f"from {schemas.directory}")


# -- dev and demo -------------------------------------------------------------------------------


@dev_app.command("up")
def dev_up() -> None:
    """Run an embedded Kafka broker and Redis in the foreground until Ctrl-C."""
    from streams.embedded import services

    settings = _settings()
    _terminate_as_interrupt()

    def body() -> None:
        with services(settings) as endpoints:
            if not endpoints.embedded:
                _io.out.print("Kafka and Redis are both configured; nothing to start.")
                return
            _io.out.print(f"[green]running[/green] {', '.join(endpoints.embedded)} (logs in {endpoints.workdir})")
            _io.out.print("In another shell:")
            for name, value in endpoints.env().items():
                _io.out.print(f"export {name}={value}", highlight=False, soft_wrap=True)
            _io.out.print("Ctrl-C stops both.")
            try:
                _wait_for_interrupt()
            except KeyboardInterrupt:
                _io.out.print("stopping...")
        _io.out.print("stopped.")

    _guarded(body)


@app.command("serve-images")
def serve_images(
    directory: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, dir_okay=True, help="Directory of images to serve.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8000,
) -> None:
    """Serve a directory of images over HTTP until Ctrl-C (a local stand-in for an image CDN)."""
    from streams.images_server import ImageServer

    _terminate_as_interrupt()
    server = ImageServer(directory, host=host, port=port)
    try:
        base_url = server.start()
    except OSError as exc:
        _io.err.print(f"[red]error:[/red] cannot listen on {host}:{port}: {exc.strerror or exc}", highlight=False)
        raise typer.Exit(1) from exc
    try:
        _io.out.print(f"serving {server.root} at {base_url}", highlight=False, soft_wrap=True)
        _io.out.print(
            "The worker refuses private and loopback addresses unless allowed, e.g. "
            "SWATCH_FETCH_ALLOW_NETWORKS=127.0.0.0/8. Ctrl-C stops.",
            highlight=False,
        )
        _wait_for_interrupt()
    except KeyboardInterrupt:
        _io.out.print("stopping...")
    finally:
        server.stop()
