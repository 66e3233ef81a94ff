"""The embedded stack: real servers that answer, and that never outlive what started them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

from streams import embedded
from streams.config import Settings
from streams.embedded import EmbeddedStack, services
from streams.errors import EmbeddedStackError

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"  # a zombie is already dead
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_redis_set_get_with_ttl(redis_url: str, unique_name: object) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"swatch:test:{os.getpid()}:{time.time_ns()}"
    client.set(key, b"prediction", px=400)
    assert client.get(key) == b"prediction"
    assert 0 < client.pttl(key) <= 400
    deadline = time.monotonic() + 5
    while client.get(key) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get(key) is None, "the key outlived its TTL"


def test_stack_starts_answering_servers_and_stops_them(tmp_path: Path) -> None:
    with EmbeddedStack(workdir=tmp_path) as stack:
        assert stack.kafka_bootstrap and stack.redis_url
        pids = [p.pid for p in stack.processes]
        assert AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=5).brokers
        assert redis.Redis.from_url(stack.redis_url).ping()
        assert (tmp_path / "kafka.log").exists() and (tmp_path / "redis.log").exists()
    assert _wait_gone(pids) == []
    stack.stop()  # a second stop is harmless


def test_configured_endpoints_start_nothing() -> None:
    settings = Settings(kafka={"bootstrap": "kafka.example:9092"}, redis={"url": "redis://cache.example:6379/0"})
    with services(settings) as endpoints:
        assert endpoints.embedded == ()
        assert endpoints.env() == {
            "SWATCH_KAFKA_BOOTSTRAP": "kafka.example:9092",
            "SWATCH_REDIS_URL": "redis://cache.example:6379/0",
        }


def test_a_server_that_will_not_start_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "tansu_binary", lambda: "/bin/false")
    with pytest.raises(EmbeddedStackError, match=r"kafka exited with code 1 \(attempt 3\); log .*kafka\.log"):
        embedded.start_kafka(tmp_path)


def test_stack_stops_its_processes_when_a_test_fails(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids.json"
    test_file = tmp_path / "test_failing.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import json, os
            import pytest
            from streams.embedded import EmbeddedStack

            @pytest.fixture
            def stack():
                with EmbeddedStack() as s:
                    yield s

            def test_fails(stack):
                with open(os.environ["PID_FILE"], "w") as out:
                    json.dump([p.pid for p in stack.processes], out)
                raise AssertionError("deliberate failure")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env={**os.environ, "PID_FILE": str(pid_file)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "deliberate failure" in result.stdout
    pids = json.loads(pid_file.read_text())
    assert len(pids) == 2
    assert _wait_gone(pids) == []


def test_servers_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = "import json,time\nfrom streams.embedded import EmbeddedStack\ns=EmbeddedStack().start()\n"
    script += "print(json.dumps([p.pid for p in s.processes]), flush=True)\ntime.sleep(120)\n"
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel's parent-death signal must
        parent.wait(10)
        assert _wait_gone(pids) == []
    finally:
        if parent.poll() is None:
            parent.kill()


def test_dev_up_prints_variables_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWATCH_")}
    swatch = Path(sys.executable).parent / "swatch"
    proc = subprocess.Popen([str(swatch), "dev", "up"], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        exports: dict[str, str] = {}
        for line in proc.stdout:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                exports[name] = value
            if "Ctrl-C" in line:
                break
        assert set(exports) == {"SWATCH_KAFKA_BOOTSTRAP", "SWATCH_REDIS_URL"}
        assert AdminClient({"bootstrap.servers": exports["SWATCH_KAFKA_BOOTSTRAP"]}).list_topics(timeout=5).brokers
        client = redis.Redis.from_url(exports["SWATCH_REDIS_URL"], socket_timeout=2)
        assert client.ping()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(exports["SWATCH_REDIS_URL"], socket_connect_timeout=1).ping()
    finally:
        if proc.poll() is None:
            proc.kill()
