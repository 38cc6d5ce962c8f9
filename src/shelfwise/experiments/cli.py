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


@experiments_app.command("simulate")
def simulate_cmd(
    experiment: str,
    days: float = typer.Option(7.0, min=0.01, help="simulated days of traffic under the experiment"),
    pre_days: float = typer.Option(7.0, min=0.0, help="days before it (outcomes only: CUPED's pre-period)"),
    shoppers: int = typer.Option(2000, min=10, help="simulated shoppers (the first N of the storefront's)"),
    effect: list[str] = typer.Option([], "--effect", help="a known treatment effect, VARIANT:purchase=1.05[,click=1.1"
                                                          ",cart=..,revenue=..] (repeatable)"),
    items: int = typer.Option(12_000, help="the synthetic storefront being served (as generated: `shelfwise run` "
                                           "and `generate` default to 12000 items)"),
    shop_shoppers: int = typer.Option(20_000, "--shop-shoppers", help="its shoppers (`generate --shoppers`)"),
    url: Optional[str] = typer.Option(None, help="drive this HTTP API (else the pipeline in process)"),
    key: Optional[str] = typer.Option(None, help="the API key for --url (scope read and ingest)"),
    ingest: bool = typer.Option(True, "--ingest/--no-ingest", help="send the simulated clicks, carts and "
                                                                  "purchases through the real ingestion path"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="print the experiment's results as JSON"),
) -> None:
    """Simulated shoppers with known tastes (the synthetic storefront's) visit the rails the real pipeline serves
    them — through the experiment's variants — with position bias and a click / cart / purchase model; a known
    treatment effect may be injected per variant. Exposures and outcomes go to the experiment log (and, with
    --ingest, the outcome events through the real ingestion path), dated from the experiment's start on (the
    simulated days may run ahead of the clock); the results over them are printed."""
    import numpy as np

    from shelfwise.experiments.runtime import ExperimentRuntime
    from shelfwise.experiments.simulator import Effect, Population, Simulator, http_policy
    from shelfwise.request import RecRequest
    from shelfwise.synthetic import generate_storefront

    effects: dict[str, Effect] = {}
    for spec in effect:
        name, _, kv = spec.partition(":")
        try:
            effects[name] = Effect(**{k: float(v) for k, v in (x.split("=", 1) for x in kv.split(",") if x)})
        except (TypeError, ValueError):
            err.print(f"[red]error:[/red] --effect {spec!r}: expected VARIANT:purchase=1.05,click=1.1 "
                      "(click, cart, purchase, revenue, latency, errors)")
            raise typer.Exit(2) from None
    with _service() as svc:
        exp = svc.get(experiment)
        variants = [v["name"] for v in exp["spec"]["variants"]]
        unknown = sorted(set(effects) - set(variants))
        if unknown:
            err.print(f"[red]error:[/red] --effect names unknown variant(s) {unknown}; {experiment} has {variants}")
            raise typer.Exit(2)
        settings = svc.settings
        rt = ExperimentRuntime(settings, store=svc.store, xlog=svc.log, background=False)
        shop = generate_storefront(n_items=items, n_shoppers=shop_shoppers, n_events=100, seed=settings.seed)
        population = Population(shop=shop, seed=seed)
        engine = None
        if url:
            policy = http_policy(url.rstrip("/"), headers={"Authorization": f"Bearer {key}"} if key else None)
        else:
            from shelfwise.service import Shelfwise

            engine = Shelfwise(settings)

            def policy(shopper: str, placement: str, k: int) -> list[str]:
                ans = engine.recommend_many([RecRequest(placement=placement, shopper=shopper, k=k)], log=False)[0]
                return [r.item_id for r in ans.items]

        def assign(unit: str) -> str | None:
            got = rt.assign(unit, None, "homepage")
            return next((a.variant for a in got.items if a.experiment == experiment), None)

        try:
            sim = Simulator(population, {v: policy for v in variants}, effects, control=variants[0])
            start = float(exp["started_at"] or time.time()) + 1.0
            traffic = sim.run(assign, days, start, seed, pre_days=pre_days,
                              shoppers=np.arange(min(shoppers, len(population.shoppers))))
            traffic.to_log(svc.log, experiment)
            sent = 0
            if ingest:
                events = list(traffic.events())
                for at in range(0, len(events), 1000):
                    part = events[at:at + 1000]
                    if engine is not None:
                        engine.ingest(part)
                    else:
                        import httpx

                        httpx.post(f"{url.rstrip('/')}/v1/events", json=[e.model_dump(mode="json") for e in part],
                                   headers={"Authorization": f"Bearer {key}"} if key else None,
                                   timeout=60).raise_for_status()
                    sent += len(part)
        finally:
            if engine is not None:
                engine.close()
        table = Table(title=f"simulated {experiment}: {days:g} days, {min(shoppers, len(population.shoppers))} "
                            "shoppers")
        for col in ("variant", "requests", "effect"):
            table.add_column(col)
        codes = np.asarray(traffic.x["variant"], np.int64)
        served = np.bincount(codes[codes >= 0], minlength=len(traffic.variants))
        counts = dict(zip(traffic.variants, served.tolist()))
        for v in variants:
            table.add_row(v, str(int(counts.get(v, 0))), str(effects[v]) if v in effects else "")
        results = svc.results(experiment, until=start + days * 86400.0)
        if as_json:
            out.print_json(json.dumps(results, default=str))
            return
        out.print(table)
        conv = results.get("analysis", {}).get("metrics", {}).get("conversion", {}).get("comparisons", {})
        for v, c in conv.items():
            out.print(f"conversion, {v} vs {variants[0]}: {c.get('relative', 0):+.1%} (p = {c.get('p_value', 1):.3g})")
        out.print(f"{sent} outcome events ingested; the full report: shelfwise experiments report {experiment}")


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
