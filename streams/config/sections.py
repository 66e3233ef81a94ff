"""The sections of Swatch's configuration: one frozen model per concern, every field documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator

from streams.config.names import env_var_name, mask_extra, mask_url_password


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Where the Kafka cluster is and how to authenticate to it."""

    bootstrap: str | None = Field(
        None,
        description="Kafka bootstrap servers, host:port[,host:port...]. Unset: `swatch demo` and `swatch dev up` "
        "start an embedded broker; the worker requires it.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; required when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password.")
    ssl_ca_location: str | None = Field(
        None, description="Path of the CA bundle that signed the brokers' certificates."
    )
    ssl_certificate_location: str | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_key_location: str | None = Field(None, description="Client private key for mutual TLS.")
    ssl_key_password: SecretStr | None = Field(None, description="Password of the client private key.")
    client_id: str = Field("swatch", min_length=1, description="client.id prefix shown in broker logs and quotas.")
    group_id: str = Field("swatch-worker", min_length=1, description="Consumer group of the worker.")
    session_timeout_ms: int = Field(
        45_000, ge=1_000, le=300_000, description="Consumer session.timeout.ms; tests use a few seconds."
    )
    fetch_wait_max_ms: int = Field(
        100,
        ge=0,
        le=30_000,
        description="Consumer fetch.wait.max.ms: longest a fetch waits for data. Kafka answers as soon as data "
        "is there, so this costs only idle fetch requests; a broker that holds every fetch for the whole wait "
        "(the embedded one) adds it to the latency.",
    )
    extra: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka properties passed through unchanged, e.g. "
        "'socket.keepalive.enable=true,client.rack=eu-west-1a'.",
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (mask_extra(value) if name == "extra" else value)

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"{server.strip()!r} is not host:port; write e.g. kafka-0.kafka:9092,kafka-1.kafka:9092"
                )
        return value

    @model_validator(mode="after")
    def _check_sasl(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            missing = [
                env_var_name("kafka", name)
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"security protocol {self.security_protocol} needs SASL credentials: set {', '.join(missing)}"
                )
        return self


class RegistrySettings(_Section):
    """The Confluent-compatible schema registry, if any."""

    url: str | None = Field(
        None,
        description="Schema registry URL. Unset: events use Avro single-object encoding (schema fingerprint "
        "header); set: the Confluent wire format (magic byte + schema id). mock:// URLs use an in-memory registry.",
    )
    basic_auth: SecretStr | None = Field(None, description="Registry credentials as user:password.")
    auto_register: bool = Field(
        True, description="Register schemas on first use; set false where schemas are registered by CI only."
    )
    compatibility: Literal[
        "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE"
    ] = Field(
        "FULL_TRANSITIVE",
        description="Compatibility level set on every subject Swatch registers (with auto-register on). The "
        "registry's own default, BACKWARD, accepts removing a required field, which breaks old readers.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https", "mock"):
            raise ValueError("must be an http(s):// URL (or mock:// for an in-memory registry)")
        return value


class RedisSettings(_Section):
    """The prediction cache."""

    url: str | None = Field(
        None,
        description="Redis URL (redis://, rediss:// or unix://). Unset: `swatch demo` and `swatch dev up` start "
        "an embedded redis-server.",
    )
    ttl_s: int = Field(30 * 24 * 3600, ge=1, description="Seconds a cached prediction lives.")
    timeout_ms: int = Field(
        100, ge=1, le=60_000, description="Per-call Redis timeout; a slower Redis counts as a cache miss (fail open)."
    )
    key_prefix: str = Field("swatch:pred:", description="Prefix of every prediction cache key.")
    version_prefix: str = Field(
        "swatch:ver:", description="Prefix of the keys that hold each listing's last published version."
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (mask_url_password(value) if name == "url" and value else value)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://, e.g. redis://redis:6379/0")
        return value


class TopicSettings(_Section):
    """Topic names and how `swatch topics create` makes them."""

    listings: str = Field("listings", min_length=1, description="Input: listing events.")
    attributes: str = Field(
        "listing-attributes", min_length=1, description="Output: attribute events (compacted, key = listing id)."
    )
    review: str = Field("listing-attributes-review", min_length=1, description="Output: review requests.")
    decisions: str = Field("review-decisions", min_length=1, description="Reviewers' decisions.")
    dlq: str = Field("listings-dlq", min_length=1, description="Dead letters: input that could not be processed.")
    partitions: int = Field(6, ge=1, le=10_000, description="Partitions for topics that `swatch topics create` makes.")
    replication: int = Field(
        -1, ge=-1, le=32, description="Replication factor for new topics; -1 uses the broker's default."
    )


class ModelSettings(_Section):
    """Which model the worker serves and how it decides."""

    dir: Path | None = Field(None, description="Model directory (weights + model_card.json). Unset: the demo model.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Inference device; auto picks CUDA when present."
    )
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="Inference runtime: torch, onnx (ONNX Runtime, CPU only) or auto: torch on CUDA, ONNX Runtime "
        "on the CPU when installed (the faster one in `swatch bench model`), else torch.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU threads for inference (torch intra-op). Unset: torch's default, one per core; on a "
        "shared or busy host fewer threads can be much faster.",
    )
    thresholds: dict[str, Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=dict,
        description="Per-attribute acceptance thresholds overriding the model card, e.g. 'colour=0.8,pattern=0.9'.",
    )


class BatchSettings(_Section):
    """Micro-batching of images for the model."""

    max_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Largest micro-batch sent to the model. Unset: 8 on the CPU, 128 on CUDA (the fastest "
        "batches of `swatch bench model`: larger CPU batches fall out of the cache).",
    )
    max_wait_ms: int = Field(
        20, ge=0, le=10_000, description="Longest a non-full batch waits for more images before it is run."
    )
    max_in_flight: int = Field(
        512, ge=1, le=100_000, description="Listings in flight before partitions are paused (backpressure)."
    )
    concurrency: int = Field(
        1,
        ge=1,
        le=64,
        description="Batches run at once, each on its own model thread with SWATCH_MODEL_THREADS threads: on a "
        "busy CPU, 2 batches of 1 thread each keep the cores fuller than 1 batch of 2 threads.",
    )


class FetchSettings(_Section):
    """Limits of the image fetcher."""

    connect_timeout_s: float = Field(3.0, gt=0, le=120, description="TCP/TLS connect timeout per attempt.")
    total_timeout_s: float = Field(10.0, gt=0, le=600, description="Whole-download timeout per attempt.")
    max_bytes: int = Field(
        10 * 2**20, ge=1024, le=2**30, description="Largest image accepted, enforced while streaming."
    )
    max_redirects: int = Field(3, ge=0, le=20, description="Redirect hops followed; each hop is re-checked.")
    retries: int = Field(2, ge=0, le=10, description="Retries for transient failures (timeouts, 429, 5xx).")
    per_host_concurrency: int = Field(8, ge=1, le=1024, description="Concurrent downloads per image host.")
    allow_networks: tuple[IPvAnyNetwork, ...] = Field(
        (),
        description="Private networks the SSRF guard lets through, as CIDRs, e.g. '127.0.0.0/8' for a local "
        "image server. Empty: only globally routable addresses.",
    )
    url_cache_entries: int = Field(
        100_000,
        ge=0,
        le=10_000_000,
        description="URLs remembered with their content hash and validators (ETag, Last-Modified): a repeated "
        "URL is revalidated with a conditional GET instead of downloaded again. 0: off.",
    )
    url_cache_max_age_s: float = Field(
        300.0,
        ge=0,
        le=30 * 24 * 3600,
        description="Longest a remembered URL is reused without asking its server, when its Cache-Control "
        "max-age allows it; 0: always revalidate.",
    )


class WorkerSettings(_Section):
    """The stream worker's process: identity, delivery mode, shutdown and its HTTP port."""

    id: str | None = Field(None, description="Worker id in dead letters and logs. Unset: host name and process id.")
    instance_id: str | None = Field(
        None,
        description="Static group membership (group.instance.id), e.g. the pod name of a StatefulSet: a restart "
        "inside the session timeout gets its partitions back without a rebalance.",
    )
    transactional_id: str | None = Field(
        None,
        description="Opt-in transactional mode: outputs and offsets commit in one transaction. Must be unique and "
        "stable per worker (e.g. the pod name).",
    )
    transaction_interval_ms: int = Field(
        1000, ge=10, le=600_000, description="How often the transactional mode commits a transaction."
    )
    commit_interval_ms: int = Field(
        1000, ge=10, le=600_000, description="How often finished offsets are committed (at-least-once mode)."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="On SIGTERM, how long in-flight listings may take before they are dropped."
    )
    revoke_timeout_s: float = Field(
        10.0, ge=0, le=600, description="On a rebalance, how long work of revoked partitions may take to finish."
    )
    max_images: int = Field(8, ge=1, le=100, description="Images fetched per listing; the rest are not fetched.")
    max_images_in_flight: int = Field(
        128,
        ge=1,
        le=100_000,
        description="Images held in memory at once (downloaded, not yet preprocessed); bounds downloaded bytes to "
        "this times SWATCH_FETCH_MAX_BYTES (decoding adds SWATCH_WORKER_PREPROCESS_THREADS times 64 MiB).",
    )
    preprocess_threads: int = Field(
        2,
        ge=1,
        le=256,
        description="Threads decoding and resizing images; each decode uses at most 64 MiB "
        "(tagger.decode.MAX_DECODE_BYTES), so decoding needs at most this times 64 MiB.",
    )
    heap_trim_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="How often freed heap memory is handed back to the kernel (glibc malloc_trim), which keeps "
        "the RSS flat; 0: never.",
    )
    listing_retries: int = Field(
        2, ge=0, le=100, description="Retries of a listing whose model batch failed, before it is dead-lettered."
    )
    max_internal_errors: int = Field(
        20,
        ge=0,
        le=100_000,
        description="Unexpected errors (bugs) tolerated per SWATCH_WORKER_INTERNAL_ERROR_WINDOW_S, each dead-lettered "
        "as internal_error; one more stops the worker with exit code 1.",
    )
    internal_error_window_s: float = Field(
        60.0, gt=0, le=86_400, description="The window of SWATCH_WORKER_MAX_INTERNAL_ERRORS."
    )
    stuck_after_s: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="/healthz turns 503 when a listing has been in flight this long, or an assigned partition's "
        "commit position has not moved for this long while records wait behind it.",
    )
    loop_stall_s: float = Field(
        30.0, gt=0, le=3_600, description="/healthz turns 503 when the event loop has not turned for this long."
    )
    metrics_host: str | None = Field(
        None,
        description="Address of /metrics, /healthz and /readyz. Unset: 0.0.0.0 inside Kubernetes "
        "(KUBERNETES_SERVICE_HOST is set), 127.0.0.1 elsewhere.",
    )
    metrics_port: int = Field(
        9400, ge=0, le=65535, description="Port of /metrics, /healthz and /readyz; 0 = any free port."
    )


class ReviewSettings(_Section):
    """The review service (`swatch review`): where it listens, whom it trusts, how long leases last."""

    host: str = Field(
        "127.0.0.1",
        description="Address the review UI and API listen on. Anything but loopback needs "
        "SWATCH_REVIEW_BEHIND_PROXY=true: the service authenticates no one itself.",
    )
    port: int = Field(8070, ge=0, le=65535, description="Port of the review UI and API (0: any free port).")
    behind_proxy: bool = Field(
        False,
        description="Say that an authenticating proxy is in front and sets the reviewer header; required to listen "
        "on a non-loopback address. With it, requests without the header are refused.",
    )
    reviewer_header: str = Field(
        "X-Forwarded-User",
        min_length=1,
        description="Header the auth proxy sets to the reviewer's identity. Without a proxy, the login field's "
        "cookie names the reviewer.",
    )
    group_id: str = Field(
        "swatch-review", min_length=1, description="Consumer group of the review service (reads the review topic)."
    )
    lease_ttl_s: float = Field(
        120.0,
        ge=1,
        le=86_400,
        description="How long a reviewer holds an item without a heartbeat; the open item page renews it.",
    )
    key_prefix: str = Field("swatch:review:", min_length=1, description="Prefix of the review service's Redis keys.")
    decision_memory_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long a decision id is remembered, so a repeated submission is answered, not applied twice.",
    )
    bulk_min_confidence: float = Field(
        0.8, ge=0, le=1, description="The bulk grid offers items whose every uncertain top candidate is at least this."
    )
    explain: bool = Field(
        True, description="Compute Grad-CAM overlays on the item page (needs the reviewed model on this host)."
    )


class LogSettings(_Section):
    """Logging of the long-running commands."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["json", "text"] = Field("json", description="json for log shippers, text for people.")
