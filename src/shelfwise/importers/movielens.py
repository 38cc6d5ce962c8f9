"""MovieLens 100K: ``u.data`` (user, item, rating, unix time) and ``u.item`` (title, release date, genres).

Ratings >= 4 become ``purchase_completed``, the rest ``product_viewed``; the movie's genres are its categories
(the first listed genre is the category path, all genres are tags). The release date is the item's
``created_at``, its year the ``release_year`` attribute; a release before 1970 (outside the catalog's time range)
is kept as the attribute only. Event ids are ``movielens:<line>``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from shelfwise.domain import EARLIEST, Event, EventContext, Item
from shelfwise.importers.base import (ImportFormatError, ImportStats, LineReader, Loader, Progress, check_id,
                                      find_file, parse_int, validated)

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western"]
POSITIVE_RATING = 4


def read_genres(directory: Path) -> list[str]:
    try:
        path = find_file(directory, "u.genre")
    except FileNotFoundError:
        return GENRES
    names: dict[int, str] = {}
    with LineReader(path, encoding="latin-1") as reader:
        for lineno, line in reader:
            if not line.strip():
                continue
            name, sep, idx = line.rpartition("|")
            if not sep:
                raise ImportFormatError(path, lineno, f"expected 'genre|index', got {line[:60]!r}")
            names[parse_int(idx, "genre index", path, lineno)] = name
    return [names[i] for i in sorted(names)]


def parse_items(reader: LineReader, genres: list[str]) -> Iterator[Item]:
    path = reader.path
    for lineno, line in reader:
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 5 + len(genres):
            raise ImportFormatError(path, lineno, f"expected {5 + len(genres)} '|'-separated fields "
                                                  f"(id|title|release|video release|url|{len(genres)} genre flags), "
                                                  f"got {len(f)}")
        item_id = check_id(f[0], "movie id", path, lineno)
        flags = f[5:]
        if any(x not in ("0", "1") for x in flags):
            raise ImportFormatError(path, lineno, "genre flags must be 0 or 1")
        names = [g for g, x in zip(genres, flags) if x == "1"]
        created = None
        attributes: dict[str, object] = {"genres": names}
        if f[4]:
            attributes["imdb_url"] = f[4]
        if f[2].strip():
            try:
                released = datetime.strptime(f[2].strip(), "%d-%b-%Y").replace(tzinfo=timezone.utc)
            except ValueError:
                raise ImportFormatError(path, lineno, f"release date {f[2]!r} is not like 01-Jan-1995") from None
            attributes["release_year"] = released.year
            created = released if released >= EARLIEST else None
        yield validated(lambda: Item(id=item_id, title=f[1], category=names[:1], tags=names, created_at=created,
                                     attributes=attributes), path, lineno)


def parse_ratings(reader: LineReader, loader: Loader) -> Iterator[Event]:
    path = reader.path
    for lineno, line in reader:
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != 4:
            raise ImportFormatError(path, lineno, "expected 4 tab-separated fields (user, item, rating, unix time), "
                                                  f"got {len(f)}: {line[:60]!r}")
        user = check_id(f[0], "user id", path, lineno)
        item = check_id(f[1], "item id", path, lineno)
        rating = parse_int(f[2], "rating", path, lineno)
        if not 1 <= rating <= 5:
            raise ImportFormatError(path, lineno, f"rating must be 1..5, got {rating}")
        ts = parse_int(f[3], "timestamp", path, lineno)
        loader.ensure_item(item)
        kind = "purchase_completed" if rating >= POSITIVE_RATING else "product_viewed"
        yield validated(lambda: Event(event_id=f"movielens:{lineno}", type=kind, user_id=user, item_id=item,
                                      timestamp=datetime.fromtimestamp(ts, timezone.utc), context=EventContext(),
                                      properties={"rating": rating}), path, lineno)


def import_movielens(engine, directory: Path, progress: Progress | None = None) -> ImportStats:
    directory = Path(directory)
    ratings = find_file(directory, "u.data")
    loader = Loader(engine, "movielens", progress)
    try:
        items_path: Path | None = find_file(directory, "u.item")
    except FileNotFoundError:
        items_path = None
        loader.stats.notes.append("no u.item: movies imported without titles or genres")
    if items_path is not None:
        genres = read_genres(directory)
        with LineReader(items_path, encoding="latin-1") as reader:
            loader.items(parse_items(reader, genres))
    with LineReader(ratings) as reader:
        loader.events(parse_ratings(reader, loader), reader)
    return loader.finish()
