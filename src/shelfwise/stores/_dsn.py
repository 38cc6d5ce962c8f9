"""DSN helpers: backend options travel in the DSN's query string and are removed before the driver sees it."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def split_options(dsn: str, names: set[str]) -> tuple[str, dict[str, str]]:
    """Remove the query parameters in ``names`` from ``dsn``; returns (remaining DSN, removed options)."""
    parts = urlsplit(dsn)
    keep, opts = [], {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in names:
            opts[k] = v
        else:
            keep.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(keep))), opts


def with_scheme(dsn: str, scheme: str) -> str:
    return scheme + "://" + dsn.split("://", 1)[1]


def redact(dsn: str) -> str:
    """The DSN without its password, for logs and messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
