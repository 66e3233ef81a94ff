"""Operator commands: configuration, topics, schemas, the local stack and the image server."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated

import typer

from streams.cli.common import (
    _guarded,
    _io,
    _settings,
    _table,
    _terminate_as_interrupt,
    app,
    config_app,
    dev_app,
    schemas_app,
    topics_app,
)
from streams.codec import SCHEMA_NAMES, SchemaSet
from streams.config import CONFIG_FILE_VAR, ENV_VARS
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
def config_env() -> None:
    """List every SWATCH_* variable with what it sets."""
    table = _table("variable", "meaning", title=f"Swatch variables (a YAML file may be named by {CONFIG_FILE_VAR})")
    for var in ENV_VARS.values():
        table.add_row(var.name, var.description + (" [secret]" if var.secret else ""))
    _io.out.print(table)


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
                threading.Event().wait()
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
        threading.Event().wait()
    except KeyboardInterrupt:
        _io.out.print("stopping...")
    finally:
        server.stop()
