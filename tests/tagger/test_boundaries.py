"""The model side stands alone: nothing in tagger imports streams."""

from __future__ import annotations

import ast
from pathlib import Path

import tagger
from tagger.errors import SwatchError, TaggerError

TAGGER = Path(tagger.__file__).parent


def test_tagger_never_imports_streams() -> None:
    offenders = []
    for path in TAGGER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] == "streams"]
    assert offenders == []


def test_one_exception_tree() -> None:
    from streams.errors import ConfigError, DecodeError, EmbeddedStackError

    for error in (TaggerError, ConfigError, DecodeError, EmbeddedStackError):
        assert issubclass(error, SwatchError)
