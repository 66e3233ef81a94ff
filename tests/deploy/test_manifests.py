"""The Kubernetes manifests (deploy/k8s), checked offline.

Every kustomization is rendered with a real kustomize (`kubectl kustomize`: Debian's
kubernetes-client, whose kustomize is v2.0.3, or any newer kubectl; SWATCH_KUBECTL names another).
The rendered core objects are validated against the Kubernetes schemas bundled with
kubernetes-validate (strict: unknown fields fail), the custom resources against the trimmed CRD
schemas in deploy/k8s/crds with jsonschema, and everything, with deploy/Dockerfile, by checkov
(offline, from its own venv at .venv/tools/checkov). Then parity with the code: the generated
ConfigMaps are what `swatch config env` prints now; every SWATCH_* the manifests set is a known
variable and the environment each container gets loads as valid settings; the probes, ports and
scrape paths are the ones the worker and the review service serve (started here, then asked on the
rendered paths); KEDA, the HPA, the alerts and the Strimzi topics agree with the settings and with
`swatch topics create`; every metric an alert or the dashboard names exists.

A missing kubectl or checkov skips its tests with the reason shown, except with
SWATCH_REQUIRE_DEPLOY_TOOLS=1 (CI), where it fails them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from streams.cli import app
from streams.config import ENV_VARS, Settings, load_settings
from streams.metrics import WorkerMetrics
from streams.review.metrics import ReviewMetrics
from streams.topics import topic_specs

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRDS = K8S / "crds"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CHECKOV = Path(os.environ.get("SWATCH_CHECKOV") or ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov")
CHECKOV_VERSION = "3.3.30"  # the Makefile pins the same
REQUIRE_TOOLS = os.environ.get("SWATCH_REQUIRE_DEPLOY_TOOLS") == "1"

OVERLAYS = ("cpu", "gpu", "hpa", "dev")
# Every kustomization: the overlays, the pieces they are made of, and the Strimzi topics.
KUSTOMIZATIONS = ("base", "review-auth", "keda", "monitoring", "strimzi", *OVERLAYS)
# What each one renders, by kind (the final report lists the same).
CORE = {
    "ConfigMap": 1,
    "Deployment": 2,
    "Job": 1,
    "NetworkPolicy": 3,
    "PodDisruptionBudget": 2,
    "Service": 2,
    "ServiceAccount": 1,
}
FRONT = {"Ingress": 1, "Service": 3}  # the review proxy's Service and Ingress (review-auth)
MONITORING = {"ServiceMonitor": 2, "PrometheusRule": 1, "ConfigMap": 2}  # ConfigMap: + the dashboard
KEDA = {"ScaledObject": 1, "TriggerAuthentication": 1}
EXPECTED_KINDS = {
    "base": CORE,
    "review-auth": CORE | FRONT,
    "keda": KEDA,
    "monitoring": {"ServiceMonitor": 2, "PrometheusRule": 1, "ConfigMap": 1},
    "strimzi": {"KafkaTopic": 5},
    "cpu": CORE | FRONT | MONITORING | KEDA,
    "gpu": CORE | FRONT | MONITORING | KEDA,
    "hpa": CORE | FRONT | MONITORING | {"HorizontalPodAutoscaler": 1},
    "dev": CORE,
}
# The oldest Kubernetes the manifests claim (autoscaling/v2, policy/v1 PDBs, the namespace name
# label and Job TTLs are all GA by 1.23; kubernetes-validate's oldest schemas are 1.25's) and the newest.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
CUSTOM_GROUPS = ("keda.sh", "monitoring.coreos.com", "kafka.strimzi.io")
# Metrics the alerts and the dashboard use that Swatch does not export: the consumer-group lag
# and committed offsets come from a Kafka exporter (Strimzi's Kafka Exporter, kafka_exporter).
EXTERNAL_METRICS = {
    "kafka_consumergroup_lag": {"consumergroup", "topic", "partition"},
    "kafka_consumergroup_current_offset": {"consumergroup", "topic", "partition"},
}
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "container", "endpoint"}
SWATCH_CONTAINERS = ("worker", "review", "topics")

runner = CliRunner()


def _tool_missing(message: str) -> None:
    if REQUIRE_TOOLS:
        pytest.fail(f"{message} (SWATCH_REQUIRE_DEPLOY_TOOLS=1 makes this a failure)")
    pytest.skip(message)


# -- rendering ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl() -> str:
    found = shutil.which(os.environ.get("SWATCH_KUBECTL") or "kubectl")
    if not found:
        _tool_missing(
            "kubectl not found: install it (Debian: sudo apt-get install kubernetes-client) to render deploy/k8s"
        )
    assert found is not None
    return found


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Every kustomization rendered once: name -> objects."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in KUSTOMIZATIONS:
        result = subprocess.run(
            [kubectl, "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"kubectl kustomize deploy/k8s/{name} failed:\n{result.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def _kinds(objects: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in objects:
        counts[obj["kind"]] = counts.get(obj["kind"], 0) + 1
    return counts


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    def named(actual: str) -> bool:  # generated ConfigMaps carry a content hash
        return actual == name or (
            kind == "ConfigMap" and bool(re.fullmatch(rf"{re.escape(name)}-[a-z0-9]{{10}}", actual))
        )

    found = [o for o in objects if o["kind"] == kind and named(o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj["spec"]["template"]["spec"]["containers"])


def _container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in _containers(obj) if c["name"] == name)


def _workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "Job")]


# Ids are paths: a bare "gpu" id would mark the test as needing a CUDA device (tests/conftest.py).
@pytest.mark.parametrize("name", KUSTOMIZATIONS, ids=lambda name: f"deploy/k8s/{name}")
def test_every_kustomization_renders_what_it_should(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    objects = rendered[name]
    assert _kinds(objects) == EXPECTED_KINDS[name]
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), f"duplicate objects in {name}"
    namespaces = {o["metadata"].get("namespace") for o in objects}
    expected = {"base": {"swatch"}, "keda": {None}, "monitoring": {None}, "strimzi": {"kafka"}, "dev": {"swatch-dev"}}
    assert namespaces == expected.get(name, {"swatch"})


def test_overlays_differ_where_they_should(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def worker(overlay: str) -> dict[str, Any]:
        return _one(rendered[overlay], "Deployment", "swatch-worker")

    gpu = worker("gpu")["spec"]["template"]["spec"]
    assert _container(worker("gpu"), "worker")["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    for overlay in ("cpu", "hpa", "dev"):
        assert "nvidia.com/gpu" not in json.dumps(worker(overlay))
    # hpa repeats the cpu overlay's worker resources and settings: they must agree.
    assert _container(worker("hpa"), "worker")["resources"] == _container(worker("cpu"), "worker")["resources"]
    assert _config(rendered["hpa"]) == _config(rendered["cpu"])
    for overlay in ("cpu", "gpu", "hpa"):
        review = _one(rendered[overlay], "Deployment", "swatch-review")
        assert sorted(c["name"] for c in _containers(review)) == ["oauth2-proxy", "review"]
        assert (
            review["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "review"
        )
    assert [c["name"] for c in _containers(_one(rendered["dev"], "Deployment", "swatch-review"))] == ["review"]


# -- validation -----------------------------------------------------------------------------------


def _is_custom(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].split("/")[0] in CUSTOM_GROUPS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_match_the_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    checked = 0
    for name, objects in rendered.items():
        for obj in objects:
            if _is_custom(obj):
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{name}: {obj['kind']} {obj['metadata']['name']}: {exc.message}") from exc
            checked += 1
    assert checked > 50


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        schema = doc["schema"] | ({"$defs": doc["$defs"]} if "$defs" in doc else {})
        jsonschema.Draft202012Validator.check_schema(schema)
        schemas[(doc["apiVersion"], doc["kind"])] = schema
    return schemas


def test_custom_resources_match_their_trimmed_crd_schemas(rendered: dict[str, list[dict[str, Any]]]) -> None:
    schemas = _crd_schemas()
    assert len(schemas) == 5
    seen = set()
    for name, objects in rendered.items():
        for obj in (o for o in objects if _is_custom(o)):
            key = (obj["apiVersion"], obj["kind"])
            assert key in schemas, f"{name}: no schema in deploy/k8s/crds for {key}"
            errors = sorted(jsonschema.Draft202012Validator(schemas[key]).iter_errors(obj), key=str)
            assert not errors, f"{name}: {obj['kind']} {obj['metadata']['name']}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
            )
            seen.add(key)
    assert seen == set(schemas)
    # Beyond the schema: Strimzi's Topic Operator only manages topics that name their cluster.
    for topic in rendered["strimzi"]:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"]


# -- checkov --------------------------------------------------------------------------------------


def _checkov(args: list[str]) -> dict[str, Any]:
    if not CHECKOV.exists():
        _tool_missing(
            f"checkov not found at {CHECKOV}: `make test` makes its venv (python -m venv .venv/tools/checkov && "
            f".venv/tools/checkov/bin/pip install checkov=={CHECKOV_VERSION})"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    env |= {"BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [str(CHECKOV), *args, "--skip-download", "--quiet", "--compact", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )
    assert result.stdout.strip(), f"checkov printed nothing (exit {result.returncode}):\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r["results"].get("failed_checks", [])]
    assert not failed, "checkov failed:\n" + "\n".join(
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c.get('file_path')})" for c in failed
    )
    return {
        "passed": sum(r["summary"]["passed"] for r in reports),
        "skipped": [c for r in reports for c in r["results"].get("skipped_checks", [])],
    }


SKIP_ANNOTATION = re.compile(r"^(CKV2?_K8S_\d+)=(\S.{10,})$")


def test_checkov_passes_on_every_rendered_overlay(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    for name in (*OVERLAYS, "strimzi"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(rendered[name], sort_keys=False))
    result = _checkov(["--directory", str(tmp_path), "--framework", "kubernetes"])
    assert result["passed"] > 500
    # Suppressions: only as annotations, each with its reason.
    for name, objects in rendered.items():
        for obj in objects:
            for key, value in (obj["metadata"].get("annotations") or {}).items():
                if "checkov.io/" in key or "bridgecrew.io/" in key:
                    assert re.fullmatch(r"checkov\.io/skip\d+", key), f"{name}: {key}"
                    assert SKIP_ANNOTATION.match(value), f"{name}: {obj['metadata']['name']}: {key}: {value!r}"
    for check in result["skipped"]:
        assert check["suppress_comment"] not in ("", "No comment provided"), check["check_id"]


def test_checkov_passes_on_the_dockerfile() -> None:
    if not DOCKERFILE.exists():
        pytest.fail("deploy/Dockerfile is missing")
    _checkov(["--file", str(DOCKERFILE), "--framework", "dockerfile"])
    for line in DOCKERFILE.read_text().splitlines():
        if "checkov:skip=" in line:
            assert re.search(r"checkov:skip=CKV2?_DOCKER_\d+:\s*\S.{10,}", line), (
                f"a suppression needs a reason: {line}"
            )


# -- the generated configuration ----------------------------------------------------------------


def _env_files() -> list[Path]:
    return sorted(K8S.glob("*/*.env"))


def _regenerate_args(text: str) -> list[str]:
    """The `swatch config env ...` arguments named in a generated file's header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   swatch config env "))
    parts = []
    for line in lines[start:]:
        body = line.removeprefix("#").strip()
        parts.append(body.removesuffix("\\").strip())
        if not body.endswith("\\"):
            break
    argv = shlex.split(" ".join(parts))
    assert argv[:3] == ["swatch", "config", "env"]
    return argv[3:]


@pytest.fixture
def no_swatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SWATCH_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("path", _env_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_generated_env_files_are_current(path: Path, no_swatch_env: None) -> None:
    text = path.read_text()
    args = _regenerate_args(text)
    result = runner.invoke(app, ["config", "env", *args])
    assert result.exit_code == 0, result.output
    assert result.stdout == text, (
        f"{path.relative_to(ROOT)} is not what `swatch config env` prints now; regenerate it:\n"
        f"  swatch config env {shlex.join(args)} > {path.relative_to(ROOT)}"
    )


def _parse_env_file(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return dict((k, v) for k, v in pairs)


def test_configmap_output_carries_the_env_file_values(no_swatch_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    base = K8S / "base" / "swatch.env"
    args = _regenerate_args(base.read_text())
    result = runner.invoke(
        app, ["config", "env", *[a for a in args if a != "--env-file"], "--configmap", "--name", "swatch-worker"]
    )
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.stdout)
    assert document["kind"] == "ConfigMap" and document["metadata"] == {"name": "swatch-worker"}
    assert document["data"] == _parse_env_file(base.read_text())
    # Values from the environment count as given; the header says which.
    monkeypatch.setenv("SWATCH_BATCH_MAX_SIZE", "16")
    result = runner.invoke(app, ["config", "env", "--configmap"])
    assert yaml.safe_load(result.stdout)["data"] == {"SWATCH_BATCH_MAX_SIZE": "16"}
    assert "from the environment: SWATCH_BATCH_MAX_SIZE" in result.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "SWATCH_KAFKA_SASL_PASSWORD=hunter2"], "secret"),
        (["--set", "SWATCH_REDIS_URL=redis://:hunter2@redis:6379/0"], "password"),
        (["--set", "SWATCH_KAFKA_EXTRA=sasl.oauthbearer.client.secret=hunter2"], "secret"),
        (["--set", "SWATCH_NO_SUCH=1"], "SWATCH_NAME=VALUE"),
        (["--set", "SWATCH_BATCH_MAX_SIZE=-1"], "SWATCH_BATCH_MAX_SIZE"),
        (["--set", "SWATCH_BATCH_MAX_SIZE=1", "--configmap", "--env-file"], "one of"),
    ],
)
def test_config_env_refuses_secrets_and_invalid_values(no_swatch_env: None, args: list[str], says: str) -> None:
    result = runner.invoke(app, ["config", "env", "--env-file", *args])
    assert result.exit_code == 2, result.output
    assert says in result.output and "hunter2" not in result.stdout


# -- parity with the code -----------------------------------------------------------------------


def _config(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(_one(objects, "ConfigMap", "swatch-config")["data"])


def _image_env(container: dict[str, Any]) -> dict[str, str]:
    """The SWATCH_* variables the image itself sets (its deploy/Dockerfile stage's ENV), lowest precedence."""
    if not DOCKERFILE.exists():
        return {}
    target = "review" if container["name"] == "review" else "cpu"
    stage, env = None, {}
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            stage = line.split()[-1] if " AS " in line.upper() else None
        elif words[0].upper() == "ENV" and stage == target:
            for item in shlex.split(words[1]):
                key, _, value = item.partition("=")
                if key.startswith("SWATCH_"):
                    env[key] = value
    return env


def _container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The environment a container starts with (secrets as placeholders), and every SWATCH_* name set."""
    env = _image_env(container)
    names = list(env)
    for source in container.get("envFrom", []):
        data = _one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
        env |= data
        names += list(data)
    for var in container.get("env", []):
        names.append(var["name"])
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = "swatch-worker-7d9f8-abcde"
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref.get("optional") is True and ref["name"] == "swatch-credentials", var
            # An optional key overrides the ConfigMap's value only when the Secret has it.
            env.setdefault(var["name"], "from-a-secret")
    return env, [n for n in names if n.startswith("SWATCH_")]


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("SWATCH_"):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return load_settings()


@pytest.fixture(scope="module")
def overlay_settings(rendered: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], Settings]:
    """(overlay, container) -> the settings that container loads."""
    out = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for overlay in OVERLAYS:
            for workload in _workloads(rendered[overlay]):
                for container in _containers(workload):
                    if container["name"] in SWATCH_CONTAINERS:
                        env, _ = _container_env(rendered[overlay], container)
                        out[(overlay, container["name"])] = _settings_from(env, monkeypatch)
    return out


def test_every_swatch_variable_set_is_known_and_each_container_loads(
    rendered: dict[str, list[dict[str, Any]]], overlay_settings: dict[tuple[str, str], Settings]
) -> None:
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        assert all(k in ENV_VARS for k in _config(objects)), sorted(set(_config(objects)) - set(ENV_VARS))
        for workload in _workloads(objects):
            for container in _containers(workload):
                if container["name"] not in SWATCH_CONTAINERS:
                    continue
                _, names = _container_env(objects, container)
                unknown = sorted(set(names) - set(ENV_VARS))
                assert not unknown, f"{overlay}: {container['name']} sets unknown variables {unknown}"
                literal = {v["name"] for v in container.get("env", []) if "value" in v}
                secret = {n for n, var in ENV_VARS.items() if var.secret}
                assert not literal & secret, f"{overlay}: a secret written into the manifest"
                assert not set(_config(objects)) & secret
        for container in SWATCH_CONTAINERS:
            assert (overlay, container) in overlay_settings


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def _probes(container: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {
        kind: (container[kind]["httpGet"]["path"], _port(container, container[kind]["httpGet"]["port"]))
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
        if kind in container
    }


def test_probes_ports_and_grace_period_match_the_settings(
    rendered: dict[str, list[dict[str, Any]]], overlay_settings: dict[tuple[str, str], Settings]
) -> None:
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        worker_pod = _one(objects, "Deployment", "swatch-worker")
        worker = _container(worker_pod, "worker")
        settings = overlay_settings[(overlay, "worker")]
        port = settings.worker.metrics_port
        assert _probes(worker) == {
            "livenessProbe": ("/healthz", port),
            "readinessProbe": ("/readyz", port),
            "startupProbe": ("/healthz", port),
        }
        grace = worker_pod["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= settings.worker.drain_timeout_s + 15, "the drain, then the commit and flush, must fit"
        service = _one(objects, "Service", "swatch-worker")
        assert [_port(worker, p["targetPort"]) for p in service["spec"]["ports"]] == [port]
        review_pod = _one(objects, "Deployment", "swatch-review")
        review = _container(review_pod, "review")
        rsettings = overlay_settings[(overlay, "review")]
        metrics = _one(objects, "Service", "swatch-review-metrics")
        assert [_port(review, p["targetPort"]) for p in metrics["spec"]["ports"]] == [rsettings.review.port]
        if overlay == "dev":
            assert rsettings.review.host == "127.0.0.1" and not rsettings.review.behind_proxy
            assert _probes(review) == {}
            continue
        assert rsettings.review.host == "0.0.0.0" and rsettings.review.behind_proxy  # noqa: S104 - the pod network
        assert _probes(review) == {
            "livenessProbe": ("/healthz", rsettings.review.port),
            "readinessProbe": ("/readyz", rsettings.review.port),
        }
        proxy = _container(review_pod, "oauth2-proxy")
        assert f"--upstream=http://127.0.0.1:{rsettings.review.port}/" in proxy["args"]
        assert "--pass-user-headers=true" in proxy["args"]
        assert rsettings.review.reviewer_header == "X-Forwarded-User"  # the header oauth2-proxy sets
        front = _one(objects, "Service", "swatch-review")
        assert front["metadata"]["name"] == "swatch-review"
        assert [_port(proxy, p["targetPort"]) for p in front["spec"]["ports"]] == [4180], "the proxy's port only"
        ingress = _one(objects, "Ingress", "swatch-review")
        assert ingress["spec"]["tls"] and {
            p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]
        } == {"swatch-review"}
        # Scraping: each ServiceMonitor's port is a port of a Service it selects, on /metrics.
        for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
            selected = [
                s
                for s in objects
                if s["kind"] == "Service"
                and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
            ]
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["path"] == "/metrics"
                assert any(endpoint["port"] in [p["name"] for p in s["spec"]["ports"]] for s in selected)


def test_security_context_and_secret_references(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        for workload in _workloads(rendered[overlay]):
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert pod["automountServiceAccountToken"] is False
            mounts = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
                assert context["capabilities"] == {"drop": ["ALL"]} and context["runAsUser"] >= 10000
                for mount in container.get("volumeMounts", []):
                    volume = mounts[mount["name"]]
                    assert "emptyDir" in volume or (volume["secret"]["optional"] is True and mount["readOnly"])
                if container["name"] in SWATCH_CONTAINERS:
                    assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]]  # noqa: S108


def test_autoscaling_matches_the_consumer_settings(
    rendered: dict[str, list[dict[str, Any]]], overlay_settings: dict[tuple[str, str], Settings]
) -> None:
    for overlay in ("cpu", "gpu"):
        settings = overlay_settings[(overlay, "worker")]
        scaled = _one(rendered[overlay], "ScaledObject", "swatch-worker")
        assert scaled["spec"]["scaleTargetRef"]["name"] == "swatch-worker"
        assert scaled["spec"]["maxReplicaCount"] == settings.topics.partitions
        [trigger] = scaled["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["consumerGroup"] == settings.kafka.group_id
        assert meta["topic"] == settings.topics.listings
        assert meta["bootstrapServers"] == settings.kafka.bootstrap
        sasl = {None: "none", "PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
        assert meta["sasl"] == sasl[settings.kafka.sasl_mechanism]
        assert (meta["tls"] == "enable") == settings.kafka.security_protocol.endswith("SSL")
        assert int(meta["lagThreshold"]) > 0 and "activationLagThreshold" in meta
        auth = _one(rendered[overlay], "TriggerAuthentication", trigger["authenticationRef"]["name"])
        worker = _container(_one(rendered[overlay], "Deployment", "swatch-worker"), "worker")
        env_names = _container_env(rendered[overlay], worker)[1]
        assert all(e["name"] in env_names and e["containerName"] == "worker" for e in auth["spec"]["env"])
    hpa = _one(rendered["hpa"], "HorizontalPodAutoscaler", "swatch-worker")
    assert hpa["spec"]["maxReplicas"] == overlay_settings[("hpa", "worker")].topics.partitions
    assert hpa["spec"]["scaleTargetRef"]["name"] == "swatch-worker"


def test_strimzi_topics_match_swatch_topics_create(
    rendered: dict[str, list[dict[str, Any]]], overlay_settings: dict[tuple[str, str], Settings]
) -> None:
    settings = overlay_settings[("cpu", "topics")]
    specs = topic_specs(settings.topics)
    topics = {t["spec"]["topicName"]: t["spec"] for t in rendered["strimzi"]}
    assert set(topics) == {s.name for s in specs}
    for spec in specs:
        topic = topics[spec.name]
        assert (topic["partitions"], topic["replicas"]) == (spec.partitions, spec.replication)
        assert topic.get("config", {}) == spec.config


# -- metrics in the alerts and the dashboard ------------------------------------------------------


def _exported_metrics() -> dict[str, set[str]]:
    """Every sample name the worker and the review service export -> its labels."""
    names: dict[str, set[str]] = {}
    for registry in (WorkerMetrics().registry, ReviewMetrics().registry):
        for collector in list(registry._collector_to_names):
            labels = set(getattr(collector, "_labelnames", ()))
            for family in collector.describe():
                suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
                for suffix in suffixes.get(family.type, [""]):
                    names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


# Keywords, aggregations and functions: not metric names.
# fmt: off
_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
}
# fmt: on


def _selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, matcher label names) for every selector of a PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries' windows
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", expr):
        name, matchers, call = match.groups()
        before = expr[: match.start()].rstrip()
        if call or name in _PROMQL_WORDS or (before.endswith(("by (", "by(", "on (", "on(", ",")) and not matchers):
            continue
        if re.fullmatch(r"\d+(\.\d+)?(e\d+)?", name):
            continue
        yield name, set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*=~?", matchers or ""))


def _grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr) for label in group.split(",")}


def _expressions(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    rule = _one(rendered["monitoring"], "PrometheusRule", "swatch")
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    dashboard = json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"panel {panel['title']} {target['refId']}"] = target["expr"]
    return exprs


def test_every_metric_in_the_alerts_and_the_dashboard_exists(rendered: dict[str, list[dict[str, Any]]]) -> None:
    known = _exported_metrics() | EXTERNAL_METRICS
    assert "swatch_dead_letters_total" in known and "swatch_review_queue_depth" in known
    used = set()
    for where, expr in _expressions(rendered).items():
        selectors = list(_selectors(expr))
        assert selectors, where
        labels_here = set(TARGET_LABELS)
        for name, matchers in selectors:
            assert name in known, f"{where}: {name} is not a metric the worker or the review service exports"
            assert matchers <= known[name], f"{where}: {name} has no label {matchers - known[name]}"
            labels_here |= known[name]
            used.add(name)
        assert _grouping_labels(expr) <= labels_here, f"{where}: groups by {_grouping_labels(expr) - labels_here}"
    dashboard = {"swatch_dead_letters_total", "swatch_cache_lookups_total", "swatch_batch_size_bucket"}
    dashboard |= {"swatch_review_queue_depth", "swatch_review_decisions_total", "swatch_review_agreement_total"}
    dashboard |= {"swatch_review_lease_expiries_total", "swatch_end_to_end_latency_seconds_bucket"}
    assert dashboard <= used


def test_alerts_name_the_settings_they_assume_and_their_runbooks(
    rendered: dict[str, list[dict[str, Any]]], overlay_settings: dict[tuple[str, str], Settings]
) -> None:
    settings = overlay_settings[("cpu", "worker")]
    rule = _one(rendered["monitoring"], "PrometheusRule", "swatch")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    for alert in alerts:
        expr = alert["expr"]
        assert set(re.findall(r'consumergroup="([^"]+)"', expr)) <= {settings.kafka.group_id}
        assert set(re.findall(r'topic="([^"]+)"', expr)) <= {settings.topics.listings}
        assert alert["annotations"]["runbook_url"] == f"README.md#{alert['alert'].lower()}"
    unassigned = next(a for a in alerts if a["alert"] == "SwatchPartitionsUnassigned")
    assert unassigned["expr"].endswith(f"< {settings.topics.partitions}")


def test_readme_has_a_runbook_for_every_alert(rendered: dict[str, list[dict[str, Any]]]) -> None:
    readme = (ROOT / "README.md").read_text()
    if "Operations on Kubernetes" not in readme:
        pytest.skip("README.md has no 'Operations on Kubernetes' section yet")
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", readme, re.M)
    }
    rule = _one(rendered["monitoring"], "PrometheusRule", "swatch")
    missing = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"].lower() not in headings]
    assert not missing, f"README.md has no heading for {missing}"


# -- the services answer the rendered paths ------------------------------------------------------


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait(what: str, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.integration
def test_the_worker_serves_the_rendered_probe_and_scrape_paths(
    rendered: dict[str, list[dict[str, Any]]],
    overlay_settings: dict[tuple[str, str], Settings],
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: Callable[[str], str],
) -> None:
    from streams.worker import Worker
    from tests.streams.worker_harness import make_settings

    objects = rendered["cpu"]
    deployed = overlay_settings[("cpu", "worker")]
    container = _container(_one(objects, "Deployment", "swatch-worker"), "worker")
    paths = {path for path, _ in _probes(container).values()}
    monitor = _one(objects, "ServiceMonitor", "swatch-worker")
    paths |= {e["path"] for e in monitor["spec"]["endpoints"]}
    # The deployed settings, but this test's broker, Redis and topics; the rendered port when free.
    port = deployed.worker.metrics_port if _free(deployed.worker.metrics_port) else 0
    sections = {name: getattr(deployed, name).model_dump() for name in ("batch", "fetch", "model", "log")}
    sections["model"] |= {"threads": 1, "dir": None}  # the image's model directory is the demo model here
    worker_section = deployed.worker.model_dump() | {
        "metrics_port": port,
        "metrics_host": "127.0.0.1",
        "instance_id": None,
    }
    settings = make_settings(kafka_bootstrap, redis_url, unique_name("k8s"), worker=worker_section, **sections)
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    try:
        _wait("the health server", lambda: worker.metrics_port is not None)
        bound = worker.metrics_port
        assert bound is not None
        _wait("/readyz", lambda: _get(bound, "/readyz")[0] == 200)
        for path in sorted(paths):
            status, body = _get(bound, path)
            assert status == 200, (path, status, body)
        assert b"swatch_events_consumed_total" in _get(bound, "/metrics")[1]
    finally:
        worker.stop()
        thread.join(60)
    assert not thread.is_alive()


@pytest.mark.integration
def test_the_review_service_answers_the_rendered_paths_without_the_reviewer_header(
    rendered: dict[str, list[dict[str, Any]]],
    overlay_settings: dict[tuple[str, str], Settings],
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    from tests.review.harness import review_settings, running_review

    objects = rendered["cpu"]
    deployed = overlay_settings[("cpu", "review")]
    container = _container(_one(objects, "Deployment", "swatch-review"), "review")
    paths = {path for path, _ in _probes(container).values()}
    paths |= {e["path"] for e in _one(objects, "ServiceMonitor", "swatch-review")["spec"]["endpoints"]}
    assert deployed.review.behind_proxy
    review: dict[str, Any] = {"behind_proxy": True, "explain": False}
    if _free(deployed.review.port):
        review["port"] = deployed.review.port
    # Loopback here (the pod listens on its network, where only the kubelet and Prometheus reach it).
    settings = review_settings(kafka_bootstrap, redis_url, unique_name("k8s"), review=review)
    with running_review(settings, tmp_path) as service:
        port = settings.review.port
        # The kubelet and Prometheus send no reviewer header: the probes and /metrics answer anyway.
        for path in sorted(paths):
            status, body = _get(port, path)
            assert status == 200, (path, status, body)
        # Everything else needs the header the proxy sets.
        assert _get(port, "/api/counts")[0] == 401
        assert _get(port, "/api/counts", {deployed.review.reviewer_header: "alice"})[0] == 200
        assert service.process.poll() is None
