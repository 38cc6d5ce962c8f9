"""``shelfwise keys create | list | revoke`` — API keys (stored hashed in the event store's database)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import List, Optional

import typer
from rich.table import Table

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)


def _store():
    from shelfwise.settings import load_settings
    from shelfwise.stores import open_privacy_store

    settings = load_settings()
    return open_privacy_store(settings.events_dsn, secure_delete=settings.privacy.sqlite_secure_delete)


def _when(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@keys_app.command("create")
def create(
    scope: List[str] = typer.Option(..., "--scope", help="ingest (events, consent), read (recommendations), admin "
                                                         "(everything else); repeat for several"),
    name: Optional[str] = typer.Option(None, help="a name to recognise the key by (unique among active keys)"),
    publishable: bool = typer.Option(False, "--publishable", help="a browser key: may only post events and read "
                                                                  "rails, from the --origin pages"),
    origin: List[str] = typer.Option([], "--origin", help="allowed page origin of a publishable key, e.g. "
                                                          "https://shop.example (repeatable)"),
    rate: Optional[float] = typer.Option(None, help="requests per second for this key (default: "
                                                    "security.rate_per_key)"),
    quiet: bool = typer.Option(False, "--quiet", help="print only the key (for scripts)"),
) -> None:
    """Create a key. It is printed once and stored only as a hash: keep it."""
    from shelfwise.console import CLIError, console, friendly
    from shelfwise.security.keys import InvalidKeyRequest, create_key
    from shelfwise.stores.protocols import KeyExists

    with friendly():
        store = _store()
        try:
            token, rec = create_key(store, name, scope, "publishable" if publishable else "secret", origin, rate)
        except (InvalidKeyRequest, KeyExists) as e:
            raise CLIError(str(e)) from None
        finally:
            store.close()
        if quiet:
            typer.echo(token)
            return
        console.print(f"created key [bold]{rec.name}[/bold] (id {rec.key_id}, {rec.kind}, scopes: "
                      f"{', '.join(rec.scopes)}{'; origins: ' + ', '.join(rec.origins) if rec.origins else ''})")
        console.print("[yellow]this is the only time the key is shown; it is stored as a hash[/yellow]")
        typer.echo(token)


@keys_app.command("list")
def list_keys(
    all_keys: bool = typer.Option(False, "--all", help="include revoked keys"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
) -> None:
    """The keys (never the keys themselves: only their records)."""
    from shelfwise.console import console, friendly

    with friendly():
        store = _store()
        try:
            keys = store.list_keys(include_revoked=all_keys)
        finally:
            store.close()
        if as_json:
            for k in keys:
                typer.echo(json.dumps({"id": k.key_id, "name": k.name, "kind": k.kind, "scopes": list(k.scopes),
                                       "origins": list(k.origins), "rate": k.rate, "created_at": k.created_at,
                                       "revoked_at": k.revoked_at}))
            return
        table = Table(title=f"{len(keys)} key(s)")
        for col in ("id", "name", "kind", "scopes", "origins", "rate", "created", "revoked"):
            table.add_column(col)
        for k in keys:
            table.add_row(k.key_id, k.name, k.kind, " ".join(k.scopes), " ".join(k.origins),
                          "" if k.rate is None else f"{k.rate:g}/s", _when(k.created_at), _when(k.revoked_at))
        console.print(table)


@keys_app.command("revoke")
def revoke(key: str = typer.Argument(..., help="the key's id or name")) -> None:
    """Revoke a key: refused by every API replica within security.key_cache_s (default 5 s)."""
    import time

    from shelfwise.console import CLIError, console, friendly

    with friendly():
        store = _store()
        try:
            rec = store.revoke_key(key, time.time())
        finally:
            store.close()
        if rec is None:
            raise CLIError(f"no active key with id or name {key[:80]!r} (see `shelfwise keys list`)")
        console.print(f"revoked key {rec.name} (id {rec.key_id})")
