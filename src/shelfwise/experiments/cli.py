"""``shelfwise experiments ...``: create, start, ramp, stop, list, show, report, power, check.

The commands work on the database directly (no server needed); running servers pick changes up within
``experiments.reload_interval_s``. Registered on the main app in ``shelfwise/cli.py``.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

experiments_app = typer.Typer(help="Online experiments: A/B tests, interleaving, bandits; results with intervals, "
                                   "CUPED, Bayesian readout and anytime-valid sequences.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@contextmanager
def _service() -> Iterator[Any]:
    """The experiment service, with user errors printed as messages (exit code 2), never as tracebacks."""
    from shelfwise.console import friendly
    from shelfwise.experiments.admin import Conflict, ExperimentInvalid, ExperimentService, NotFound
    from shelfwise.settings import load_settings

    with friendly():
        svc = ExperimentService(load_settings())
        try:
            yield svc
        except ExperimentInvalid as e:
            err.print("[red]invalid; nothing was saved[/red]")
            for x in e.errors:
                err.print(f"  {x['path'] or '(document)'}: {x['reason']}")
            raise typer.Exit(2) from None
        except (NotFound, Conflict) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
        finally:
            svc.close()


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
    return "" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _share(text: str) -> float:
    """0.5, 50 %, 50%."""
    t = text.strip().replace(" ", "")
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"traffic must be a share like 0.5 or 50%, got {text!r}") from None
    return value


def _summary(e: dict[str, Any]) -> str:
    serve = f", serving {e['serve']}" if e.get("serve") else ""
    return f"{e['id']}: {e['status']} at {e['traffic']:.0%} of its slice{serve}"


@experiments_app.command("create")
def create_cmd(file: Path = typer.Argument(..., help="an experiment JSON document ('-' = stdin)"),
               start: bool = typer.Option(False, "--start", help="start it at once"),
               dry_run: bool = typer.Option(False, "--dry-run", help="only validate"),
               author: Optional[str] = typer.Option(None, help="default: the login name"),
               comment: str = typer.Option("", "--comment", "-m")) -> None:
    """Create an experiment (a draft unless --start)."""
    with _service() as svc:
        doc = _read(file)
        if dry_run:
            got = svc.validate(doc)
            for w in got["warnings"]:
                err.print(f"[yellow]warning:[/yellow] {w['path']}: {w['reason']}")
            out.print(f"valid: {got['id']}")
            return
        got = svc.create(doc, _author(author), comment, start=start)
        for w in got["warnings"]:
            err.print(f"[yellow]warning:[/yellow] {w['path']}: {w['reason']}")
        out.print(_summary(got))


@experiments_app.command("edit")
def edit_cmd(experiment: str, file: Path = typer.Argument(..., help="the new document ('-' = stdin)"),
             author: Optional[str] = typer.Option(None), comment: str = typer.Option("", "--comment", "-m")) -> None:
    """Replace a draft's document."""
    with _service() as svc:
        out.print(_summary(svc.update(experiment, _read(file), _author(author), comment)))


@experiments_app.command("start")
def start_cmd(experiment: str, author: Optional[str] = typer.Option(None),
              comment: str = typer.Option("", "--comment", "-m")) -> None:
    """Start a draft."""
    with _service() as svc:
        out.print(_summary(svc.start(experiment, _author(author), comment)))


@experiments_app.command("ramp")
def ramp_cmd(experiment: str, traffic: str = typer.Argument(..., help="new exposure share: 0.5 or 50%"),
             author: Optional[str] = typer.Option(None), comment: str = typer.Option("", "--comment", "-m")) -> None:
    """Expose a larger share of the experiment's slice (only grows; nobody already in moves)."""
    with _service() as svc:
        out.print(_summary(svc.ramp(experiment, _share(traffic), _author(author), comment)))


@experiments_app.command("stop")
def stop_cmd(experiment: str, reason: str = typer.Option("", "--reason", "-m"),
             serve: Optional[str] = typer.Option(None, help="keep serving this variant to the exposed shoppers"),
             author: Optional[str] = typer.Option(None)) -> None:
    """Stop an experiment (optionally keep serving a variant, e.g. control or the winner)."""
    with _service() as svc:
        out.print(_summary(svc.stop(experiment, _author(author), reason, serve)))


@experiments_app.command("serve")
def serve_cmd(experiment: str, variant: Optional[str] = typer.Argument(None, help="omit to release the shoppers"),
              author: Optional[str] = typer.Option(None), comment: str = typer.Option("", "--comment", "-m")) -> None:
    """Change what a stopped experiment serves its shoppers."""
    with _service() as svc:
        out.print(_summary(svc.serve(experiment, variant, _author(author), comment)))


@experiments_app.command("list")
def list_cmd(status: Optional[str] = typer.Option(None, help="draft, running or stopped")) -> None:
    """Every experiment with its status, layer and traffic."""
    with _service() as svc:
        table = Table(title="experiments")
        table.add_column("id", no_wrap=True)
        for col in ("kind", "status", "layer", "slice", "traffic", "variants", "started (UTC)", "stopped (UTC)"):
            table.add_column(col)
        for e in svc.list(status):
            s = e["spec"]
            table.add_row(e["id"], s["kind"], e["status"] + (f" → {e['serve']}" if e["serve"] else ""), s["layer"],
                          f"[{s['layer_range'][0]:g}, {s['layer_range'][1]:g})", f"{e['traffic']:.0%}",
                          ", ".join(f"{v['name']} {v['share']:.0%}" for v in s["variants"]), _when(e["started_at"]),
                          _when(e["stopped_at"]))
        out.print(table)


@experiments_app.command("show")
def show_cmd(experiment: str) -> None:
    """The experiment document, state and history (JSON)."""
    with _service() as svc:
        out.print_json(json.dumps(svc.get(experiment), default=str))


@experiments_app.command("report")
def report_cmd(experiment: str, out_dir: Optional[Path] = typer.Option(None, "--out", help="default: "
                                                                             "<data_dir>/reports/experiment-<ID>"),
               as_json: bool = typer.Option(False, "--json", help="print the results as JSON instead")) -> None:
    """Results as Markdown with plots (and results.json) in a directory."""
    from shelfwise.experiments.report import write_report

    with _service() as svc:
        if as_json:
            out.print_json(json.dumps(svc.results(experiment), default=str))
            return
        target = out_dir or svc.settings.data_dir / "reports" / f"experiment-{experiment}"
        path = write_report(svc, experiment, target)
        out.print(f"report: {path}")


@experiments_app.command("power")
def power_cmd(baseline: float = typer.Option(..., help="control conversion (or the mean with --metric mean)"),
              mde: float = typer.Option(..., help="relative lift to detect, e.g. 0.05"),
              power: float = typer.Option(0.8, min=0.01, max=0.99),
              alpha: Optional[float] = typer.Option(None, help="default: experiments.alpha"),
              units: Optional[int] = typer.Option(None, help="units per variant: also report the power there"),
              variants: int = typer.Option(2, min=2),
              variance_reduction: float = typer.Option(0.0, min=0.0, max=0.99, help="e.g. CUPED's"),
              metric: str = typer.Option("proportion", help="proportion or mean"),
              sd: Optional[float] = typer.Option(None, help="standard deviation (metric mean)")) -> None:
    """Sample size per variant for a relative lift (and the power at a given size)."""
    with _service() as svc:
        got = svc.power(baseline, mde, alpha, power, units, variants, variance_reduction, metric, sd)
        out.print(f"{got['control']:,} units per variant ({got['units_total']:,} for {variants} variants) to "
                  f"detect {mde:+.1%} with power {power:.0%}")
        if "power_at_units" in got:
            out.print(f"at {units:,} units per variant: power {got['power_at_units']:.1%}"
                      + (f", smallest detectable lift {got['mde_at_units']:+.2%}" if "mde_at_units" in got else ""))


@experiments_app.command("check")
def check_cmd(watch: float = typer.Option(0.0, min=0.0, help="repeat every N seconds (0 = once)")) -> None:
    """Evaluate running experiments' guardrails; stop breached ones (they serve control)."""
    with _service() as svc:
        while True:
            for action in svc.check_guardrails():
                worst = [g for g in action["guardrails"] if g["status"] == "breached"]
                state = "[red]STOPPED, serving control[/red]" if action["stopped"] else "ok"
                out.print(f"{action['experiment']}: {state}")
                for g in worst:
                    out.print(f"  {g['metric']} ({g['variant']}): {g['detail']}")
            if not watch:
                return
            time.sleep(watch)
