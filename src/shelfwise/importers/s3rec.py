"""S3-Rec sequence files: ``<user> <item> <item> ...`` a line, oldest first, plus ``*_item2attributes.json``.

Each interaction becomes a ``purchase_completed`` (the Amazon data are reviews of bought products) with an
increasing synthetic timestamp, one minute apart, so the order inside a sequence is kept exactly and the whole
sequence stays one session. Event ids are ``s3rec:<dataset>:<line>:<position>``.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Iterator

from shelfwise.domain import Event, EventContext, Item
from shelfwise.importers.base import (SYNTHETIC_EPOCH, SYNTHETIC_STEP_S, ImportFormatError, ImportStats,
                                      LineReader, Loader, Progress, check_id, validated)


def dataset_name(path: Path) -> str:
    """``Beauty.txt.gz`` → ``Beauty`` (used in event ids, so stable across runs)."""
    name = path.name
    for suffix in (".gz", ".txt", ".csv", ".tsv"):
        name = name.removesuffix(suffix)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:48]
    return name or "s3rec"


def read_attributes(path: Path) -> list[Item]:
    """Catalog items from ``{"item": [attribute ids]}``; attributes are kept as ids and as ``attr:<id>`` tags."""
    with LineReader(path) as reader:
        text = reader.read_all()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ImportFormatError(path, e.lineno, f"invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(doc, dict):
        raise ImportFormatError(path, 1, 'expected a JSON object {"<item id>": [<attribute id>, ...]}')
    items = []

    def line_of(key: str) -> int:  # only computed for an error message
        return text.count("\n", 0, max(text.find(json.dumps(key)), 0)) + 1

    for key, attrs in doc.items():
        if not isinstance(attrs, list) or not all(isinstance(a, (int, str)) and not isinstance(a, bool)
                                                  for a in attrs):
            raise ImportFormatError(path, line_of(key), f"item {key!r}: expected a list of attribute ids")
        if not key.strip() or len(key) > 256 or not key.isprintable():
            check_id(key, "item id", path, line_of(key))
        attr_ids = [str(a) for a in attrs]
        items.append(Item(id=key.strip(), attributes={"attribute_ids": attr_ids},
                          tags=[f"attr:{a}" for a in attr_ids]))
    return items  # type: ignore[return-value]


def parse_events(reader: LineReader, dataset: str, loader: Loader) -> Iterator[Event]:
    path = reader.path
    for lineno, line in reader:
        parts = line.split()
        if not parts:
            continue  # blank line
        if len(parts) < 2:
            raise ImportFormatError(path, lineno, "expected '<user id> <item id> [<item id> ...]' "
                                                  f"(space-separated), got {line[:60]!r}")
        user = check_id(parts[0], "user id", path, lineno)
        for pos, raw in enumerate(parts[1:]):
            item = check_id(raw, "item id", path, lineno)
            loader.ensure_item(item)
            ts = SYNTHETIC_EPOCH + timedelta(seconds=SYNTHETIC_STEP_S * pos)
            yield validated(lambda: Event(event_id=f"s3rec:{dataset}:{lineno}:{pos}", type="purchase_completed",
                                          user_id=user, item_id=item, timestamp=ts,
                                          context=EventContext()), path, lineno)


def import_s3rec(engine, sequences: Path, attributes: Path | None = None, progress: Progress | None = None,
                 dataset: str | None = None) -> ImportStats:
    sequences = Path(sequences)
    dataset = dataset or dataset_name(sequences)
    loader = Loader(engine, dataset, progress)
    if not sequences.is_file():
        raise FileNotFoundError(f"sequence file not found: {sequences}")
    if attributes is not None:
        loader.items(read_attributes(Path(attributes)))
    with LineReader(sequences) as reader:
        loader.events(parse_events(reader, dataset, loader), reader)
    return loader.finish()
