"""``shelfwise rules ...`` and ``shelfwise reports ...``: the rule set API from the terminal.

The commands work on the database directly (no server needed); a running server picks changes up on its next
request. Registered on the main app in ``shelfwise/cli.py``.
"""

from __future__ import annotations

import getpass
import json
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

rules_app = typer.Typer(help="Merchandising rule sets: validate, save, publish, roll back, shadow.",
                        no_args_is_help=True)
reports_app = typer.Typer(help="Merchandising reports.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@contextmanager
def _session() -> Iterator[tuple[Any, Any]]:
    """(settings, rule store), with user errors printed as messages."""
    from shelfwise.console import friendly
    from shelfwise.rules.admin import open_rule_store
    from shelfwise.rules.schema import RuleSetInvalid
    from shelfwise.rules.store import NotFound
    from shelfwise.settings import load_settings

    with friendly():
        settings = load_settings()
        store = open_rule_store(settings)
        try:
            yield settings, store
        except RuleSetInvalid as e:
            err.print("[red]invalid rule set; nothing was saved[/red]")
            for x in e.errors:
                err.print(f"  {x['path'] or '(document)'}: {x['reason']}")
            raise typer.Exit(2) from None
        except NotFound as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
        finally:
            store.close()


def _catalog(settings: Any) -> Any:
    from shelfwise.stores import open_catalog, open_event_store

    return open_catalog(open_event_store(settings.events_dsn))


def _read(path: Path) -> Any:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def _author(author: Optional[str]) -> str:
    if author:
        return author
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover
        return "cli"


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _warnings(ws: list[dict[str, str]]) -> None:
    for w in ws:
        err.print(f"[yellow]warning:[/yellow] {w['path']}: {w['reason']}")


def _dump(obj: Any) -> None:
    out.print_json(json.dumps(obj, default=str))


@rules_app.command("list")
def list_cmd() -> None:
    """Every rule set with its live, shadow and latest version."""
    from shelfwise.rules import admin

    with _session() as (settings, store):
        table = Table(title="rule sets")
        for col in ("id", "live", "shadow", "share", "latest", "updated (UTC)"):
            table.add_column(col)
        for st in admin.list_rulesets(store, settings.rules.shadow_share):
            table.add_row(st["id"], str(st["live_version"] or "-"), str(st["shadow_version"] or "-"),
                          "" if st["shadow_share"] is None else f"{st['shadow_share']:.0%}", str(st["latest_version"]),
                          _when(st["updated_at"]))
        out.print(table)


@rules_app.command("show")
def show_cmd(ruleset: str, version: Optional[int] = typer.Option(None, min=1, help="default: the latest")) -> None:
    """A version with its document (JSON)."""
    from shelfwise.rules import admin

    with _session() as (_, store):
        _dump(admin.get_ruleset(store, ruleset, version))


@rules_app.command("validate")
def validate_cmd(file: Path = typer.Argument(..., help="a rule set JSON document ('-' = stdin)"),
                 ruleset: Optional[str] = typer.Option(None, "--id", help="the rule set it will be saved as")) -> None:
    """Check a document without saving it (errors name the JSON path)."""
    from shelfwise.rules import admin

    with _session() as (settings, _):
        rs, warnings = admin.validate(_read(file), ruleset, settings.models.placements,
                                      *admin.catalog_checks(_catalog(settings).all()))
        _warnings(warnings)
        out.print(f"valid: {len(rs.rules)} rule(s)")


@rules_app.command("put")
def put_cmd(
    ruleset: str,
    file: Path = typer.Argument(..., help="a rule set JSON document ('-' = stdin)"),
    author: Optional[str] = typer.Option(None, help="default: the login name"),
    comment: str = typer.Option("", "--comment", "-m"),
    publish: bool = typer.Option(False, "--publish", help="make it live at once"),
    shadow: bool = typer.Option(True, "--shadow/--no-shadow", help="run the draft in shadow"),
) -> None:
    """Save a new version (a draft in shadow, or live with --publish)."""
    from shelfwise.rules import admin

    with _session() as (settings, store):
        facts, table = admin.catalog_checks(_catalog(settings).all())
        got = admin.put_ruleset(store, ruleset, _read(file), _author(author), comment, settings.models.placements,
                                publish=publish, shadow=shadow, catalog=facts, model=table)
        _warnings(got["warnings"])
        out.print(f"{ruleset} v{got['version']}: {got['status']}" + (" (shadow)" if got["shadow"] else ""))


@rules_app.command("publish")
def publish_cmd(ruleset: str, version: Optional[int] = typer.Option(None, min=1, help="default: the latest"),
                author: Optional[str] = typer.Option(None), comment: str = typer.Option("", "--comment", "-m")) -> None:
    """Make a version live."""
    from shelfwise.rules import admin

    with _session() as (settings, store):
        got = admin.publish(store, ruleset, version, _author(author), comment,
                            *admin.catalog_checks(_catalog(settings).all()))
        _warnings(got["warnings"])
        out.print(f"{ruleset} v{got['version']}: {got['status']}")


@rules_app.command("rollback")
def rollback_cmd(ruleset: str, version: int = typer.Option(..., min=1, help="the version to restore"),
                 author: Optional[str] = typer.Option(None), comment: str = typer.Option("", "--comment", "-m")) -> None:
    """Publish a copy of an earlier version as a new version."""
    from shelfwise.rules import admin

    with _session() as (settings, store):
        got = admin.rollback(store, ruleset, version, _author(author), comment,
                             *admin.catalog_checks(_catalog(settings).all()))
        _warnings(got["warnings"])
        out.print(f"{ruleset} v{got['version']} (copy of v{version}): {got['status']}")


@rules_app.command("versions")
def versions_cmd(ruleset: str) -> None:
    """The version history (author, time, comment, status)."""
    from shelfwise.rules import admin

    with _session() as (_, store):
        table = Table(title=f"{ruleset}: versions")
        for col in ("version", "status", "author", "created (UTC)", "comment"):
            table.add_column(col)
        for v in admin.versions(store, ruleset):
            status = v["status"] + (" + shadow" if v["shadow"] else "")
            table.add_row(str(v["version"]), status, v["author"], _when(v["created_at"]), v["comment"])
        out.print(table)


@rules_app.command("shadow")
def shadow_cmd(ruleset: str, version: Optional[int] = typer.Option(None, min=1, help="default: the latest"),
               share: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="default: rules.shadow_share"),
               stop: bool = typer.Option(False, "--stop", help="stop shadowing"),
               author: Optional[str] = typer.Option(None)) -> None:
    """Run a draft beside the live rules on a share of traffic (or --stop)."""
    from shelfwise.rules import admin

    with _session() as (settings, store):
        got = admin.set_shadow(store, ruleset, version, share, _author(author), stop=stop)
        if stop:
            out.print(f"{ruleset}: shadow stopped")
        else:
            st = next(s for s in admin.list_rulesets(store, settings.rules.shadow_share) if s["id"] == ruleset)
            out.print(f"{ruleset} v{got['shadow_version']} in shadow on {st['shadow_share']:.0%} of traffic")


@rules_app.command("shadow-report")
def shadow_report_cmd(ruleset: str, version: Optional[int] = typer.Option(None, min=1),
                      hours: Optional[float] = typer.Option(None, min=0.0, help="default: everything logged")) -> None:
    """Live vs shadow answers of the sampled requests (JSON)."""
    from shelfwise.items import ItemTable
    from shelfwise.rules.admin import open_exposure_log
    from shelfwise.rules.compile import ItemFacts
    from shelfwise.rules.reports import build_shadow_report

    with _session() as (settings, store):
        catalog = {it.id: it for it in _catalog(settings).all()}
        items = ItemTable.build(sorted(catalog), catalog)
        log = open_exposure_log(settings)
        try:
            _dump(build_shadow_report(store, log, ruleset, version, hours, items, ItemFacts.build(items, catalog)))
        finally:
            log.close()


@rules_app.command("zero-impressions")
@reports_app.command("zero-impressions")
def zero_impressions_cmd(
    hours: Optional[float] = typer.Option(None, min=0.0, help="default: rules.zero_impression_hours (72)"),
    include_unservable: bool = typer.Option(False, "--include-unservable", help="also out-of-stock/unavailable"),
    limit: int = typer.Option(50, min=0, help="items listed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """SKUs shown in no rail during the last hours, from the exposure log."""
    from shelfwise.rules.admin import open_exposure_log
    from shelfwise.rules.reports import zero_impressions

    with _session() as (settings, _):
        log = open_exposure_log(settings)
        try:
            rep = zero_impressions(_catalog(settings).all(), log, hours or settings.rules.zero_impression_hours,
                                   servable_only=not include_unservable, limit=limit)
        finally:
            log.close()
        if as_json:
            _dump(rep)
            return
        if rep.get("warning"):
            err.print(f"[yellow]warning:[/yellow] {rep['warning']}")
        table = Table(title=f"{rep['zero_impression_items']} of {rep['servable_items']} servable SKUs "
                            f"({rep['share']:.1%}) not shown in the last {rep['window_hours']:g} h")
        for col in ("item", "title", "category", "brand", "price", "stock"):
            table.add_column(col)
        for it in rep["items"]:
            table.add_row(it["item_id"], it["title"], it["category"], it["brand"] or "",
                          "" if it["price"] is None else f"{it['price']:.2f}",
                          "" if it["stock"] is None else str(it["stock"]))
        out.print(table)
