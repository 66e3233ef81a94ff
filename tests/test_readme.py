"""The README stays true to the code: every variable and topic it must document is there."""

from __future__ import annotations

from pathlib import Path

from streams.config import ENV_VARS, TopicSettings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_documents_every_variable() -> None:
    missing = [name for name in ENV_VARS if f"`{name}`" not in README]
    assert missing == [], f"add these to the README's configuration table: {missing}"


def test_readme_documents_every_topic_and_the_two_commands() -> None:
    for topic in TopicSettings().model_dump(exclude={"partitions", "replication"}).values():
        assert f"`{topic}`" in README
    assert "make demo" in README and "make test" in README
