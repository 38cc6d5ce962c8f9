"""``shelfwise models list | show | promote | rollback | check``: the model registry and releases (``release.py``)."""

from __future__ import annotations

import json
import time
from typing import Optional

import typer
from rich.table import Table

from shelfwise.console import CLIError, console, friendly
from shelfwise.settings import load_settings

models_app = typer.Typer(help="Model versions: offline metrics, gates, staged rollout, rollback.",
                         no_args_is_help=True)


def _releases():
    from shelfwise.experiments.backends import experiments_dsn, open_experiment_log, open_experiment_store
    from shelfwise.release import Releases
    from shelfwise.stores import open_model_registry
    from shelfwise.stores.models import DirectoryModelStore

    settings = load_settings()
    dsn = experiments_dsn(settings)
    xlog = open_experiment_log(dsn, settings.experiments.retention_days) if settings.experiments.exposure_log \
        else None
    models = DirectoryModelStore(settings.models_dir)
    rel = Releases(settings, models, open_model_registry(settings.registry_dsn), open_experiment_store(dsn), xlog)

    def close() -> None:
        rel.registry.close()
        rel.experiments.close()
        if xlog is not None:
            xlog.close()
    return rel, close


def _run(fn):
    from shelfwise.release import GateBlocked, ReleaseConflict, UnknownVersion

    with friendly():
        rel, close = _releases()
        try:
            return fn(rel)
        except (GateBlocked, ReleaseConflict, UnknownVersion) as exc:
            raise CLIError(str(exc)) from None
        finally:
            close()


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))


@models_app.command("list")
def list_cmd(limit: int = typer.Option(20, min=1, help="newest versions shown"),
             as_json: bool = typer.Option(False, "--json", help="the registry's view as JSON")) -> None:
    """Versions with their held-out metrics and gate results, the live one, and the rollout."""
    def go(rel):
        st = rel.status(limit)
        if as_json:
            typer.echo(json.dumps(st, indent=1))
            return
        table = Table(title=f"model versions (live: {st['live'] or 'none'})")
        for col in ("version", "status", "NDCG@12", "HR@12", "coverage@12", "long tail@12", "requests", "gates",
                    "note"):
            table.add_column(col)
        for v in st["versions"]:
            m, g = v["metrics"], v["gates"]
            table.add_row(v["version"], v["status"], _fmt(m.get("NDCG@12")), _fmt(m.get("HR@12")),
                          _fmt(m.get("coverage@12")), _fmt(m.get("long_tail@12")), _fmt(m.get("requests")),
                          "-" if not g else ("passed" if g.get("passed") else "blocked"), v["note"][:80])
        console.print(table)
        r = st["rollout"]
        if r:
            console.print(f"rollout of {r['candidate']}: {r['state']} at {r['share']:.0%} of shoppers"
                          + (f" ({r['reason']})" if r["reason"] else ""))
    _run(go)


@models_app.command("show")
def show(version: str = typer.Argument(..., help="a model version")) -> None:
    """One version's record (metrics, data window, settings, gates) as JSON."""
    _run(lambda rel: typer.echo(json.dumps(rel.version(version).view(), indent=1)))


@models_app.command("promote")
def promote(version: str = typer.Argument(..., help="a model version"),
            now: bool = typer.Option(False, "--now", help="every shopper at once (no staged rollout)"),
            author: str = typer.Option("cli", help="recorded in the audit trail")) -> None:
    """Promote a version through its gates: start its staged rollout (the running rollout's candidate: its next
    stage)."""
    _run(lambda rel: typer.echo(json.dumps(rel.promote(version, author, immediate=now), indent=1)))


@models_app.command("rollback")
def rollback(reason: str = typer.Option("", help="recorded in the audit trail"),
             author: str = typer.Option("cli", help="recorded in the audit trail")) -> None:
    """Stop the running rollout, or go back to the version live before the live one."""
    _run(lambda rel: typer.echo(json.dumps(rel.rollback(author, reason), indent=1)))


@models_app.command("check")
def check() -> None:
    """Advance or roll back the running rollout once (what each API process does every
    registry.check_interval_s)."""
    _run(lambda rel: typer.echo(json.dumps(rel.check(), indent=1, default=str)))


def parse_every(value: Optional[str]) -> float | None:
    """``6h``, ``30m``, ``90s`` or a number of seconds."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value)
    except (ValueError, IndexError):
        raise CLIError(f"--every {value!r}: a duration such as 6h, 30m or 90s") from None
    if seconds <= 0:
        raise CLIError(f"--every {value!r}: must be positive")
    return seconds


def every(seconds: float, once, sleep=time.sleep) -> None:
    """Run ``once()`` now and every ``seconds`` after each start; a failed run is reported and the next one
    happens on time (serving goes on in its own processes)."""
    while True:
        started = time.monotonic()
        try:
            once()
        except CLIError as exc:
            console.print(f"[red]training failed:[/red] {exc}")
        except Exception as exc:  # noqa: BLE001 - a scheduled job outlives one bad run
            console.print(f"[red]training failed:[/red] {type(exc).__name__}: {exc}")
        sleep(max(0.0, seconds - (time.monotonic() - started)))
