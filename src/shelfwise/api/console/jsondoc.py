"""JSON documents as the console edits them: pretty-printed with the JSON path of every line, so a validation
error (``{"path": "rules[2].action.slot", "reason": ...}``) is shown under the line of its field; and a line diff
between two versions."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Line:
    number: int
    text: str
    path: str  # the JSON path this line opens or holds ("" for the document)
    errors: list[str] = field(default_factory=list)


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def lines(doc: Any, indent: int = 2) -> list[Line]:
    """``doc`` pretty-printed (as ``json.dumps(doc, indent=2)``), each line with its JSON path."""
    out: list[Line] = []

    def emit(text: str, path: str) -> None:
        out.append(Line(len(out) + 1, text, path))

    def walk(value: Any, path: str, pad: str, prefix: str, comma: str) -> None:
        inner = pad + " " * indent
        if isinstance(value, dict) and value:
            emit(f"{pad}{prefix}{{", path)
            keys = list(value)
            for i, k in enumerate(keys):
                walk(value[k], _child(path, k), inner, json.dumps(k, ensure_ascii=False) + ": ",
                     "," if i < len(keys) - 1 else "")
            emit(f"{pad}}}{comma}", path)
        elif isinstance(value, list) and value:
            emit(f"{pad}{prefix}[", path)
            for i, v in enumerate(value):
                walk(v, _child(path, i), inner, "", "," if i < len(value) - 1 else "")
            emit(f"{pad}]{comma}", path)
        else:
            emit(f"{pad}{prefix}{json.dumps(value, ensure_ascii=False)}{comma}", path)

    walk(doc, "", "", "", "")
    return out


def text(doc: Any) -> str:
    return "\n".join(line.text for line in lines(doc))


def _parent(path: str) -> str:
    if path.endswith("]"):
        return path[:path.rindex("[")]
    return path.rpartition(".")[0]


def place_errors(doc_lines: list[Line], errors: list[dict[str, str]]) -> list[dict[str, str]]:
    """Attach each error to the first line of its path (or of its nearest enclosing path: a missing field goes
    under the object that lacks it); returns the errors that found no line (shown above the document)."""
    first: dict[str, Line] = {}
    for ln in doc_lines:
        first.setdefault(ln.path, ln)
    loose = []
    for e in errors:
        path = e.get("path", "")
        while path and path not in first:
            path = _parent(path)
        target = first.get(path)
        if target is None or (not path and e.get("path")):
            loose.append(e)
        if target is not None:
            target.errors.append(f"{e.get('path') or '(document)'}: {e['reason']}")
    return loose


def diff(old: Any, new: Any, old_label: str, new_label: str) -> list[tuple[str, str]]:
    """A unified line diff of two documents: (kind, line) with kind ``add``, ``del``, ``hunk`` or ``same``."""
    out = []
    for row in difflib.unified_diff(text(old).splitlines(), text(new).splitlines(), old_label, new_label, n=3,
                                    lineterm=""):
        if row.startswith(("---", "+++")):
            continue
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(row[:1], "same")
        out.append((kind, row))
    return out
