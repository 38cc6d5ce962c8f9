"""``shelfwise monitor``: a drift report once, or on a schedule (``--every 1h``), as a table, JSON or a plot.

Exit code: 0 when nothing drifted, 1 when a check drifted (so cron or CI can alert on it), 2 for an error (a
message, never a traceback). Registered on the main app in ``shelfwise/cli.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from shelfwise.console import CLIError, console, friendly

STYLE = {"drift": "bold red", "ok": "green", "insufficient": "yellow"}


def monitor(
    reference: Optional[str] = typer.Option(None, help="reference window: training (the days before the model's "
                                                       "newest training event), previous (the days before the "
                                                       "current window) or START..END (ISO 8601 or unix seconds); "
                                                       "default monitor.reference"),
    reference_days: Optional[float] = typer.Option(None, min=0.001, help="length of a training or previous "
                                                                         "reference window in days (default "
                                                                         "monitor.reference_days)"),
    current: Optional[str] = typer.Option(None, help="length of the current window, e.g. 24h or 90m (default "
                                                     "monitor.current_hours)"),
    until: Optional[str] = typer.Option(None, help="end of the current window, ISO 8601 or unix seconds (default: "
                                                   "now)"),
    every: Optional[str] = typer.Option(None, help="run on a schedule, e.g. 1h or 30m (default: once)"),
    runs: int = typer.Option(0, min=0, help="with --every: stop after this many runs (0 = until interrupted)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON instead of a table"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a PNG of the drifted checks' reference and "
                                                            "current distributions (each run overwrites it)"),
    metrics_port: Optional[int] = typer.Option(None, min=1, max=65535,
                                               help="serve the drift gauges for Prometheus on this port (with "
                                                    "--every)"),
) -> None:
    """Compare a reference and a current window of traffic for drift: the ranker's features, the served scores,
    the share of new items among impressions and the event mix. Exit code 1 when anything drifted."""
    from shelfwise.monitor.windows import WindowError, parse_duration, parse_time

    code = 2
    with friendly():
        try:
            hours = parse_duration(current, "--current") / 3600.0 if current is not None else None
            end = parse_time(until, "--until") if until is not None else None
            period = parse_duration(every, "--every") if every is not None else None
        except WindowError as e:
            raise CLIError(str(e)) from None
        if period is not None and end is not None:
            raise CLIError("--until fixes the current window, --every moves it: give one of them")
        if metrics_port is not None and period is None:
            raise CLIError("--metrics-port serves the gauges of a scheduled job: use it with --every")
        from shelfwise.service import Shelfwise
        from shelfwise.settings import load_settings

        engine = Shelfwise(load_settings())
        try:
            if metrics_port is not None:
                from prometheus_client import start_http_server

                start_http_server(metrics_port)
                console.print(f"drift gauges on http://0.0.0.0:{metrics_port}/metrics")
            done = 0
            while True:
                try:
                    code = _run_once(engine, reference, reference_days, hours, end, as_json, plot)
                except (WindowError, RuntimeError) as e:
                    if period is None:
                        raise CLIError(str(e)) from None
                    console.print(f"[red]error:[/red] {e}")
                    code = 2
                except Exception as e:  # a scheduled job outlives one failed run (a locked database, a full disk)
                    if period is None:
                        raise
                    console.print(f"[red]drift run failed:[/red] {type(e).__name__}: {e}")
                    code = 2
                done += 1
                if period is None or (runs and done >= runs):
                    break
                time.sleep(period)
        except KeyboardInterrupt:
            pass
        finally:
            engine.close()
    raise typer.Exit(code)


def _run_once(engine: Any, reference: str | None, reference_days: float | None, hours: float | None,
              until: float | None, as_json: bool, plot: Path | None) -> int:
    from shelfwise.monitor.drift import publish, run_drift
    from shelfwise.monitor.plot import plot_drift

    engine.refresh_model(0.0)
    report = run_drift(engine, reference, reference_days, hours, until)
    publish(report)
    out = _stdout()
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        out.print(table(report))
        for note in report.notes:
            console.print(f"note: {note}")
    if plot is not None:
        drawn = plot_drift(report, plot)
        console.print(f"plot of {drawn} drifted check(s): {plot}" if drawn else "nothing drifted: no plot written")
    verdict = {"drift": "[bold red]DRIFT[/bold red]: " + ", ".join(c.feature for c in report.drifted),
               "ok": "[green]no drift[/green]", "insufficient": "[yellow]not enough data to decide[/yellow]"}
    console.print(f"{verdict[report.status]} (model {report.model_version})")
    return 1 if report.status == "drift" else 0


def _stdout() -> Console:
    """The report's console: a terminal's width, else (a log file, a pipe) 160 columns or $COLUMNS, so the table
    keeps one line per check."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS", "") or 160))


def table(report: Any) -> Table:
    ref, cur = report.reference.to_dict(), report.current.to_dict()
    t = Table(title=f"drift: reference {ref['start']} – {ref['end']} ({ref['label']})\nvs current {cur['start']} – "
                    f"{cur['end']}", title_justify="left")
    for col, just in (("check", "left"), ("verdict", "left"), ("decided by", "left"), ("n ref / cur", "right"),
                      ("p", "right"), ("distance", "right"), ("reference → current", "left"), ("why", "left")):
        t.add_column(col, justify=just, no_wrap=col != "why")  # type: ignore[arg-type]
    order = {"drift": 0, "insufficient": 1, "ok": 2}
    for c in sorted(report.checks, key=lambda c: order[c.verdict]):
        p = c.p_adjusted if c.p_adjusted is not None else c.p_value
        t.add_row(c.feature, f"[{STYLE[c.verdict]}]{c.verdict}[/]", c.test or "—",
                  f"{c.n_reference} / {c.n_current}", _num(p, ".2g"), _num(c.distance(report.settings), ".3f"),
                  _change(c), "; ".join(c.reasons))
    return t


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None or x != x else format(x, fmt)


def _change(c: Any) -> str:
    if c.kind == "numeric":
        return f"mean {_num(c.mean_reference, '.4g')} → {_num(c.mean_current, '.4g')}"
    ref, cur = c.shares_reference or {}, c.shares_current or {}
    if not ref and not cur:
        return "—"
    k = max(set(ref) | set(cur), key=lambda k: abs(cur.get(k, 0.0) - ref.get(k, 0.0)))
    return f"{k} {ref.get(k, 0.0):.1%} → {cur.get(k, 0.0):.1%}"
