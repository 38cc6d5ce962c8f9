"""DIGINETICA (CIKM Cup 2016): ``train-purchases.csv`` and ``product-categories.csv`` (``;``-separated).

A purchase row becomes a ``purchase_completed`` of one item, in order ``ordernumber``, at ``eventdate`` plus
``timeframe`` milliseconds; anonymous rows (``userId`` = NA) belong to their session. Only products that were
bought are put in the catalog unless ``all_products`` (the category file lists 184k products).
Event ids are ``diginetica:<line>``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from shelfwise.domain import Event, EventContext, Item
from shelfwise.importers.base import (ImportFormatError, ImportStats, LineReader, Loader, Progress, check_id,
                                      find_file, parse_int, validated)

PURCHASE_HEADER = ["sessionId", "userId", "timeframe", "eventdate", "ordernumber", "itemId"]


def _rows(reader: LineReader, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    path = reader.path
    for lineno, line in reader:
        if not line.strip():
            continue
        f = line.split(";")
        if lineno == 1:
            if f != header:
                raise ImportFormatError(path, 1, f"expected the header {';'.join(header)}, got {line[:80]!r}")
            continue
        if len(f) != len(header):
            raise ImportFormatError(path, lineno, f"expected {len(header)} ';'-separated fields "
                                                  f"({';'.join(header)}), got {len(f)}")
        yield lineno, f


def parse_purchases(reader: LineReader, loader: Loader) -> Iterator[Event]:
    path = reader.path
    for lineno, f in _rows(reader, PURCHASE_HEADER):
        session = check_id(f[0], "sessionId", path, lineno)
        user = None if f[1] in ("NA", "") else check_id(f[1], "userId", path, lineno)
        offset_ms = parse_int(f[2], "timeframe", path, lineno)
        try:
            day = datetime.strptime(f[3], "%Y-%m-%d").replace(tzinfo=timezone.utc)
        except ValueError:
            raise ImportFormatError(path, lineno, f"eventdate {f[3]!r} is not YYYY-MM-DD") from None
        order = check_id(f[4], "ordernumber", path, lineno)
        item = check_id(f[5], "itemId", path, lineno)
        loader.ensure_item(item)
        ts = day + timedelta(milliseconds=offset_ms)
        yield validated(lambda: Event(event_id=f"diginetica:{lineno}", type="purchase_completed", user_id=user,
                                      session_id=session, item_id=item, order_id=order, timestamp=ts,
                                      context=EventContext()), path, lineno)


def bought_items(path: Path) -> set[str]:
    with LineReader(path) as reader:
        return {f[5].strip() for _, f in _rows(reader, PURCHASE_HEADER)}


def parse_categories(reader: LineReader, wanted: set[str] | None) -> Iterator[Item]:
    path = reader.path
    for lineno, f in _rows(reader, ["itemId", "categoryId"]):
        item = check_id(f[0], "itemId", path, lineno)
        if wanted is not None and item not in wanted:
            continue
        category = check_id(f[1], "categoryId", path, lineno)
        yield validated(lambda: Item(id=item, category=[category]), path, lineno)


def import_diginetica(engine, directory: Path, progress: Progress | None = None,
                      all_products: bool = False) -> ImportStats:
    directory = Path(directory)
    purchases = find_file(directory, "train-purchases.csv")
    loader = Loader(engine, "diginetica", progress)
    try:
        categories: Path | None = find_file(directory, "product-categories.csv")
    except FileNotFoundError:
        categories = None
        loader.stats.notes.append("no product-categories.csv: items imported without categories")
    if categories is not None:
        wanted = None if all_products else bought_items(purchases)
        with LineReader(categories) as reader:
            loader.items(parse_categories(reader, wanted))
    with LineReader(purchases) as reader:
        loader.events(parse_purchases(reader, loader), reader)
    return loader.finish()
