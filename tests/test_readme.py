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


def test_readme_documents_every_metric() -> None:
    from streams.metrics import WorkerMetrics
    from streams.review.metrics import ReviewMetrics

    names = [
        metric.name + ("_total" if metric.type == "counter" else "")
        for metrics in (WorkerMetrics(), ReviewMetrics())
        for metric in metrics.registry.collect()
    ]
    missing = [name for name in names if f"`{name}`" not in README]
    assert missing == [], f"add these to the README's metrics table: {missing}"


def test_readme_documents_every_dead_letter_reason_the_code_writes() -> None:
    import re

    source = "".join(p.read_text() for p in (Path(__file__).resolve().parents[1] / "streams").rglob("*.py"))
    written = set(re.findall(r'_Letter\(\s*"([a-z_]+)"', source)) | set(
        re.findall(r'dead_letter\(record, "([a-z_]+)"', source)
    )
    written |= {"undecodable", "unknown_schema"}  # from DecodeError.reason
    assert {"invalid_event", "output_too_large", "model_failed", "internal_error"} <= written
    missing = [reason for reason in sorted(written) if f"| `{reason}` |" not in README]
    assert missing == [], f"add these to the README's dead-letter reasons: {missing}"


def test_hostile_inputs_doc_names_only_tests_that_exist() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "hostile-inputs.md").read_text()
    source = "\n".join(p.read_text() for p in (root / "tests").rglob("test_*.py"))
    defined = set(re.findall(r"^(?:async )?def (test_\w+)", source, flags=re.M))
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", doc))
    missing = sorted(n for n in named if n not in defined)
    assert len(named) > 50, "the doc should name the tests that cover each case"
    assert missing == [], f"docs/hostile-inputs.md names tests that do not exist: {missing}"
