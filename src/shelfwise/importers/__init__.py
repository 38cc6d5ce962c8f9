"""Dataset importers: public benchmark files → event store + catalog, through the same ingest path as the API.

``FORMATS`` maps a format name (as in ``shelfwise import <format>``) to its import function.
"""

from __future__ import annotations

from shelfwise.importers.base import ImportFormatError, ImportStats, LineReader, Loader
from shelfwise.importers.completejourney import import_completejourney
from shelfwise.importers.diginetica import import_diginetica
from shelfwise.importers.movielens import import_movielens
from shelfwise.importers.s3rec import import_s3rec

FORMATS = {
    "s3rec": import_s3rec,
    "movielens": import_movielens,
    "completejourney": import_completejourney,
    "diginetica": import_diginetica,
}

__all__ = ["FORMATS", "ImportFormatError", "ImportStats", "LineReader", "Loader", "import_completejourney",
           "import_diginetica", "import_movielens", "import_s3rec"]
