"""Command line: ``shelfwise run | serve | worker | generate | import | train | recommend | evaluate | keys |
erase | monitor | models | campaign``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shelfwise.console import CLIError, console, friendly, progress
from shelfwise.settings import Settings, load_settings

app = typer.Typer(help="Shelfwise: real-time personalization for online retail.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
def _settings() -> Settings:
    return load_settings()


def _engine(settings: Settings):
    from shelfwise.service import Shelfwise

    return Shelfwise(settings)


@app.command()
def generate(
    items: int = typer.Option(12_000, min=10, help="number of SKUs"),
    shoppers: int = typer.Option(20_000, min=10, help="number of shoppers"),
    events: int = typer.Option(500_000, min=100, help="approximate number of events"),
    seed: Optional[int] = typer.Option(None, help="random seed (default: settings.seed)"),
) -> None:
    """Generate the deterministic synthetic storefront into the event store and catalog."""
    with friendly():
        settings = _settings()
        engine = _engine(settings)
        load_storefront(engine, items, shoppers, events, settings.seed if seed is None else seed)
        engine.close()


def load_storefront(engine, n_items: int, n_shoppers: int, n_events: int, seed: int) -> None:
    from shelfwise.synthetic import generate_storefront

    shop = generate_storefront(n_items=n_items, n_shoppers=n_shoppers, n_events=n_events, seed=seed)
    engine.upsert_items(shop.items)
    stored = dupes = 0
    with progress() as bar:
        task = bar.add_task("events", total=n_events)
        batch = []
        for ev in shop.events():
            batch.append(ev)
            if len(batch) == 5000:
                r = engine.ingest(batch)
                stored, dupes = stored + len(r.stored), dupes + len(r.duplicates)
                bar.advance(task, len(batch))
                batch = []
        if batch:
            r = engine.ingest(batch)
            stored, dupes = stored + len(r.stored), dupes + len(r.duplicates)
            bar.advance(task, len(batch))
        bar.update(task, total=bar.tasks[task].completed)
    console.print(f"catalog: {len(shop.items)} items; events: {stored} stored, {dupes} already present")


@app.command()
def train(
    quick: bool = typer.Option(False, "--quick", help="trending and co-visitation only: a first model in seconds"),
    every_: Optional[str] = typer.Option(None, "--every", help="train again on this schedule (6h, 30m, 90s) until "
                                                               "stopped; serving goes on meanwhile"),
) -> None:
    """Train the default pipeline on everything in the event store, register the new model version with its
    held-out metrics and release it through the gates (live at once, a staged rollout, or stored but rejected)."""
    from shelfwise.release_cli import every, parse_every

    with friendly():
        settings = _settings()
        seconds = parse_every(every_)

        def once() -> None:
            engine = _engine(settings)
            try:
                report = run_training(engine, quick=quick)
            finally:
                engine.close()
            typer.echo(report.version)

        if seconds is None:
            once()
        else:
            every(seconds, once)


QUICK_SOURCES = ("trending", "covisit", "copurchase")


def texts_to_encode(engine) -> int:
    """Item texts a full training's content source will encode: the catalog's, unless the serving model has a
    content source (whose encoded texts training reuses)."""
    return 0 if "content" in engine.pipeline.retrievers else len(engine.catalog.ids())


def run_training(engine, quick: bool = False):
    from shelfwise.training import expected_seconds, train as train_models

    settings = engine.settings
    ms = settings.models
    sources = None
    if quick:
        ms = ms.model_copy(update={"ranker": ms.ranker.model_copy(update={"enabled": False})})
        sources = QUICK_SOURCES
    else:
        engine.models.training_started(expected_seconds(engine.store.count(), ms, texts=texts_to_encode(engine)),
                                       "full")
    try:
        with progress() as bar:
            task = bar.add_task("training", total=None)

            def step(name: str) -> None:
                bar.update(task, description=f"training {name}")
                if not console.is_terminal:  # a log file (e.g. the background training of `run`): a line a step
                    console.print(f"training {name}")

            from shelfwise.evaluation.holdout import released as release_through_gates

            released: dict = {}  # the registry and its gates decide what goes live
            release = release_through_gates(engine.releases, into=released)
            report = train_models(engine.store, engine.catalog, engine.models, ms, progress=step,
                                  vectors=settings.stores.vectors, consenting=engine.guard.consenting,
                                  release=release,
                                  **({"sources": sources} if sources else {}))  # only shoppers who consent now
            bar.update(task, description="trained", total=1, completed=1)
    except BaseException as exc:
        if not quick:
            engine.models.training_finished(None, error=str(exc) or type(exc).__name__)
        raise
    if not quick:
        engine.models.training_finished(report.version)
    table = Table(title=f"model {report.version}" + (" (quick)" if quick else ""))
    for col in ("events", "shoppers", "items", "fit seconds"):
        table.add_column(col)
    table.add_row(str(report.events), str(report.shoppers), str(report.items),
                  ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
    console.print(table)
    if released:
        gates = released.get("gates", {})
        what = {"promoted": "live now", "rollout": "staged rollout started",
                "rejected": "stored, not promoted", "registered": "stored"}.get(released["action"], released["action"])
        console.print(f"model {report.version}: {what} — gates: {gates.get('reason', '-')}")
    return report


def train_in_background(engine, sequence_minutes: float) -> Path:
    """Start ``shelfwise train`` in its own process (its output in a log file); the API swaps the model in."""
    import os
    import subprocess

    from shelfwise.training import expected_seconds

    settings = engine.settings
    log = settings.data_dir / "train.log"
    # the demo's full model replaces its quick first model at once (through the gates, without a staged rollout)
    env = dict(os.environ, SHELFWISE_MODELS__SEQUENCE__MAX_TRAIN_MINUTES=str(sequence_minutes),
               SHELFWISE_REGISTRY__ROLLOUT="immediate",
               SHELFWISE_MODELS__SEQUENCE__FINETUNE_EPOCHS="1", SHELFWISE_DATA_DIR=str(settings.data_dir))
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "shelfwise.cli", "train"], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    seq = settings.models.sequence.model_copy(update={"max_train_minutes": sequence_minutes, "finetune_epochs": 1})
    engine.models.training_started(expected_seconds(engine.store.count(), settings.models.model_copy(
        update={"sequence": seq}), texts=texts_to_encode(engine)), "full", pid=proc.pid)
    return log


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="bind address (default: settings.api.host)"),
    port: Optional[int] = typer.Option(None, help="port (default: settings.api.port)"),
    workers: int = typer.Option(1, min=1, help="API processes sharing the port (scale-out: needs redis:// online "
                                              "state so that every process sees every event)"),
) -> None:
    """Start the HTTP API."""
    import uvicorn

    from shelfwise.api.app import serve_app
    from shelfwise.api.metrics import multiprocess_metrics

    with friendly():
        settings = _settings()
        h, p = host or settings.api.host, port or settings.api.port
        console.print(f"API listening on http://{h}:{p}  ({workers} process{'es' if workers > 1 else ''}; docs "
                      f"http://{h}:{p}/docs, readiness and the live model http://{h}:{p}/readyz)")
        # our log handler (observability.log_format) takes uvicorn's records too; the access log is ours
        quiet = {"log_level": "warning", "log_config": None, "access_log": False}
        if workers == 1:
            uvicorn.run(serve_app(settings), host=h, port=p, **quiet)
            return
        if settings.stores.online.startswith("memory:"):
            raise CLIError("--workers > 1 needs shared online state: set SHELFWISE_STORES__ONLINE=redis://… "
                           "(with memory:// each process would only see the events it ingested itself)")
        # Each process builds its own app from the same settings (file + environment); /metrics adds up every
        # process's metrics (prometheus-client's multiprocess mode: api/metrics.py)
        with multiprocess_metrics():
            uvicorn.run("shelfwise.api.app:serve_app", factory=True, host=h, port=p, workers=workers, **quiet)


@app.command()
def worker(
    consumers: int = typer.Option(1, min=1, help="consumer processes"),
) -> None:
    """Consume the event bus (stores.bus = redis-stream://… or kafka://…) into the event store and online state."""
    from shelfwise.worker import run_workers

    with friendly():
        settings = _settings()
        if settings.stores.bus.startswith("inprocess:"):
            raise CLIError("the in-process bus needs no worker: the API processes events itself; set "
                           "SHELFWISE_STORES__BUS=redis-stream://… or kafka://… to run workers")
        console.print(f"worker: {consumers} consumer(s) on {settings.stores.bus.split('?')[0]} → "
                      f"{settings.events_dsn.split('?')[0].split('@')[-1]}")
        run_workers(settings, consumers)


@app.command()
def run(
    host: Optional[str] = typer.Option(None),
    port: Optional[int] = typer.Option(None),
    no_serve: bool = typer.Option(False, "--no-serve", help="set up and print example rails, then exit"),
    train_minutes: float = typer.Option(2.0, min=0.1, help="cap on the sequence model's training time of the "
                                                           "demo's full model (`shelfwise train` uses the settings' "
                                                           "cap)"),
    wait: bool = typer.Option(False, "--wait", help="train the full model before serving (no quick first model)"),
    items: int = typer.Option(12_000, min=10, help="demo storefront: SKUs (first run only)"),
    shoppers: int = typer.Option(20_000, min=10, help="demo storefront: shoppers"),
    events: int = typer.Option(500_000, min=100, help="demo storefront: approximate events"),
) -> None:
    """Set everything up on the embedded default (demo storefront, a first model in seconds, the full model
    trained in the background and swapped in) and start the API."""
    with friendly():
        settings = _settings()
        console.print(f"data directory: [bold]{settings.data_dir.resolve()}[/bold]  event store: "
                      f"{settings.events_dsn}")
        engine = _engine(settings)
        if engine.store.count() == 0:
            console.print("generating the demo storefront (first run only)…")
            load_storefront(engine, items, shoppers, events, settings.seed)
        full = engine.trained and engine.pipeline.model.full
        running = (engine.models.training() or {}).get("state") == "running"
        if not full and wait:
            settings.models.sequence.max_train_minutes = min(settings.models.sequence.max_train_minutes,
                                                             train_minutes)
            run_training(engine)
        elif not full:
            if not engine.trained:
                console.print("training a first model (trending and co-visitation) to answer at once…")
                run_training(engine, quick=True)
            if not running:
                log = train_in_background(engine, train_minutes)
                console.print(f"the full model (sequence model, ALS, learned ranker) is training in the background "
                              f"and replaces the first one when ready — progress: {log}, /readyz")
        engine.close()
        engine = _engine(settings)
        example_user = show_examples(engine)
        engine.close()
        h, p = host or settings.api.host, port or settings.api.port
        if settings.security.auth == "off":
            console.print("[bold red]WARNING: security.auth = off — every endpoint is open to anyone who reaches "
                          "this port[/bold red]")
            console.print(f"try: curl 'http://{h}:{p}/v1/recommendations/homepage?user_id={example_user}&k=5'")
        else:
            key = demo_key(settings)
            console.print(f"[bold yellow]demo API key (all scopes; replaced by the next `shelfwise run`, revoke it "
                          f"with `shelfwise keys revoke demo`):[/bold yellow]\n{key}")
            console.print(f"try: curl -H 'Authorization: Bearer {key}' "
                          f"'http://{h}:{p}/v1/recommendations/homepage?user_id={example_user}&k=5'")
        if no_serve:
            return
    serve(host=h, port=p, workers=1)


def demo_key(settings: Settings) -> str:
    """A fresh all-scope key named "demo" (the previous demo key is revoked: a key is shown only once)."""
    import time

    from shelfwise.security.keys import create_key
    from shelfwise.stores import open_privacy_store

    store = open_privacy_store(settings.events_dsn, secure_delete=settings.privacy.sqlite_secure_delete)
    try:
        store.revoke_key("demo", time.time())
        return create_key(store, "demo", ["ingest", "read", "admin"])[0]
    finally:
        store.close()


def show_examples(engine) -> str:
    """Print a few example rails; returns the example shopper id."""
    from shelfwise.request import RecRequest

    shopper = next((s for s in engine.pipeline.shopper_index if not s.startswith("session:")), None)
    item = str(engine.pipeline.items.ids[int(engine.pipeline.retrievers["trending"].global_score.argmax())])
    examples = [
        RecRequest("homepage", shopper=shopper, k=5),
        RecRequest("pdp_similar", item_id=item, k=5),
        RecRequest("pdp_fbt", item_id=item, k=5),
        RecRequest("cart_upsell", shopper=shopper, cart=[item], k=5),
    ]
    titles = {it.id: it.title for it in engine.catalog.get(
        [item] + [r.item_id for ex in examples for r in engine.recommend(ex).items]).values()}
    for ex in examples:
        ans = engine.recommend(ex)
        who = {"homepage": f"shopper {ex.shopper}", "cart_upsell": f"a cart with {item} ({titles.get(item, '')})"}.get(
            ex.placement, f"item {ex.item_id} ({titles.get(item, '')})")
        table = Table(title=f"{ex.placement} for {who}")
        table.add_column("item")
        table.add_column("title")
        table.add_column("score")
        table.add_column("sources")
        for r in ans.items:
            table.add_row(r.item_id, titles.get(r.item_id, ""), f"{r.score:.3f}", ",".join(r.sources))
        console.print(table)
    return shopper or "u00001"


@app.command()
def recommend(
    users: Path = typer.Option(..., exists=False, help="file with one shopper id a line"),
    k: int = typer.Option(20, min=1, max=1000),
    out: Path = typer.Option(Path("recs.jsonl"), help="JSON lines output"),
    placement: str = typer.Option("homepage"),
    at: str = typer.Option("trained", help="time the requests are made at: 'trained' (the newest event the model "
                                           "was trained on, as `evaluate` asks), 'now', or ISO date/time or unix "
                                           "seconds"),
) -> None:
    """Batch export: the placement's top-k for every shopper in a file, one JSON object a line."""
    import time

    from shelfwise.assemble import assemble
    from shelfwise.request import RecRequest

    with friendly():
        if not users.is_file():
            raise CLIError(f"users file not found: {users}")
        settings = _settings()
        engine = _engine(settings)
        if not engine.trained:
            raise CLIError("no trained model yet: run `shelfwise train` first")
        ids = [line.strip() for line in users.read_text().splitlines() if line.strip()]
        # the ranked rails, without exploration slots (an export's impressions are neither shown nor logged)
        pipe = assemble(engine.pipeline.model, engine.merch.stage)
        now = (pipe.trained_until if at == "trained" else time.time() if at == "now"
               else _parse_time(at, "--at"))
        if now == float("inf"):  # a model saved without its training time
            now = time.time()
        with progress() as bar, out.open("w") as fh:
            task = bar.add_task("recommending", total=len(ids))
            for start in range(0, len(ids), 1024):
                chunk = ids[start:start + 1024]
                reqs = [RecRequest(placement, shopper=u, k=k, now=now) for u in chunk]
                engine.admit_requests(reqs)  # pseudonymised ids, consent, erased shoppers
                need = [r.shopper for r in reqs if r.shopper is not None and r.state is None]
                states = engine.store.history(need, settings.models.history_length)
                for r in reqs:
                    if r.shopper is not None and r.state is None:
                        r.state = states[r.shopper]
                for u, ans in zip(chunk, pipe.recommend(reqs)):
                    fh.write(json.dumps({"user": u, "items": [r.item_id for r in ans.items]}) + "\n")
                bar.advance(task, len(chunk))
        engine.close()
        console.print(f"wrote {len(ids)} lists to {out}")


import_app = typer.Typer(help="Import a public dataset into the event store and catalog (resumable).",
                         no_args_is_help=True)
app.add_typer(import_app, name="import")


class _ImportBar:
    """Adapter from the importers' progress protocol to a rich progress bar (bytes of the file read)."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.task = bar, None

    def stage(self, description: str, total: int | None) -> None:
        self.task = self.bar.add_task(description, total=total)

    def advance(self, done: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, done)


def run_import(fmt: str, path: Path, **options) -> None:
    from shelfwise.importers import FORMATS
    from shelfwise.importers.base import resolve_path

    with friendly():
        settings = _settings()
        path = resolve_path(path, settings.datasets_dir)
        for key in ("attributes",):
            if options.get(key) is not None:
                options[key] = resolve_path(options[key], settings.datasets_dir)
        engine = _engine(settings)
        try:
            from rich.progress import DownloadColumn

            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                          TimeElapsedColumn(), console=console) as bar:
                stats = FORMATS[fmt](engine, path, progress=_ImportBar(bar), **options)
        finally:
            engine.close()
        console.print(stats.summary())
        for note in stats.notes:
            console.print(f"note: {note}")


@import_app.command("s3rec")
def import_s3rec_cmd(
    sequences: Path = typer.Argument(..., help="SEQ.txt[.gz]: '<user> <item> <item> ...' a line, oldest first"),
    attributes: Optional[Path] = typer.Option(None, help="ITEM2ATTR.json[.gz]: {item: [attribute ids]}"),
) -> None:
    """S3-Rec sequence files (Amazon Beauty/Sports/Toys ...): reviews as purchases, order kept."""
    run_import("s3rec", sequences, attributes=attributes)


@import_app.command("movielens")
def import_movielens_cmd(directory: Path = typer.Argument(..., help="folder with u.data and u.item (or .gz)")) -> None:
    """MovieLens 100K: ratings >= 4 as purchases, the rest as views; genres as categories."""
    run_import("movielens", directory)


@import_app.command("completejourney")
def import_completejourney_cmd(
    directory: Path = typer.Argument(..., help="folder with transactions_sample.csv and products.csv (or .gz)"),
    all_products: bool = typer.Option(False, "--all-products", help="catalog every product, not only those sold"),
) -> None:
    """The Complete Journey: baskets as orders, real prices, departments and brands."""
    run_import("completejourney", directory, all_products=all_products)


@import_app.command("diginetica")
def import_diginetica_cmd(
    directory: Path = typer.Argument(..., help="folder with train-purchases.csv and product-categories.csv"),
    all_products: bool = typer.Option(False, "--all-products", help="catalog every product, not only those bought"),
) -> None:
    """DIGINETICA / CIKM Cup 2016: purchases and product categories."""
    run_import("diginetica", directory, all_products=all_products)


@app.command()
def evaluate(
    fmt: str = typer.Argument(..., metavar="FORMAT",
                              help="s3rec | movielens | completejourney | diginetica, or 'store' (the event store)"),
    path: Optional[Path] = typer.Argument(None, help="dataset file or folder (also relative to settings.datasets_dir)"),
    attributes: Optional[str] = typer.Option(None, help="s3rec ITEM2ATTR.json[.gz]; default: the "
                                                        "<name>_item2attributes.json[.gz] beside the file, 'none' for none"),
    protocol: str = typer.Option("auto", help="loo, temporal, cold-items, cold-shoppers, comma-separated; auto = "
                                              "loo, plus temporal when the data have real timestamps"),
    targets: str = typer.Option("test", help="leave-one-out targets: test (last item; the published protocol), "
                                             "valid (second-to-last: for tuning), or valid,test"),
    models: Optional[str] = typer.Option(
        None, help="baselines (popularity, covisit, als, ease, any source; cold-start: popularity-cold, "
                   "popularity-category, attr-knn), "
                   "'content' (the content source as served) and 'default' (the configured homepage blend); default: "
                   "popularity,covisit,als,ease,default, and for the cold-start protocols "
                   "popularity-cold,popularity-category,attr-knn,content (cold-items) or "
                   "popularity,attr-knn,covisit,als,content (cold-shoppers)"),
    k: str = typer.Option("5,10,20", help="cut-offs"),
    report: Optional[Path] = typer.Option(None, help="folder for report.md, results.json and plots"),
    export_recs: Optional[Path] = typer.Option(None, help="folder for the test-time top-k lists of every model "
                                                         "(JSON lines, as `recommend` writes), for outside scorers"),
    split_time: Optional[str] = typer.Option(None, help="temporal split time T (ISO date/time or unix seconds)"),
    test_fraction: float = typer.Option(0.2, min=0.01, max=0.99, help="temporal: share of interactions after T "
                                                                     "when --split-time is not given"),
    batch_size: int = typer.Option(1024, min=1, help="requests per Pipeline.recommend call"),
    fresh: bool = typer.Option(False, "--fresh", help="re-import the dataset instead of reusing the cached import"),
    cold_fraction: float = typer.Option(0.1, min=0.001, max=0.9, help="cold-start protocols: share of the items "
                                                                       "(cold-items) or shoppers (cold-shoppers) "
                                                                       "held out of training"),
    seed: int = typer.Option(0, help="cold-start protocols: seed of the held-out draw"),
) -> None:
    """Offline evaluation (leave-one-out full ranking, temporal split, cold items, cold shoppers) of the baselines and
    the default pipeline."""
    import time

    with friendly():
        from shelfwise.evaluation import evaluate_dataset, load_dataset
        from shelfwise.evaluation.report import write_report
        from shelfwise.importers.base import resolve_path

        t0 = time.perf_counter()
        settings = _settings()
        try:
            ks = sorted({int(x) for x in k.split(",") if x.strip()})
        except ValueError:
            raise CLIError(f"--k must be comma-separated integers, got {k!r}") from None
        if not ks or ks[0] < 1:
            raise CLIError("--k needs at least one cut-off >= 1")
        when = None
        if split_time is not None:
            when = _parse_time(split_time)
        attr: Optional[Path] = None
        if fmt == "s3rec" and path is not None and attributes != "none":
            if attributes is not None:
                attr = Path(attributes)
            else:
                seq = resolve_path(path, settings.datasets_dir)
                stem = seq.name.removesuffix(".gz").removesuffix(".txt")
                for cand in (seq.with_name(f"{stem}_item2attributes.json"),
                             seq.with_name(f"{stem}_item2attributes.json.gz")):
                    if cand.is_file():
                        attr = cand
                        console.print(f"attributes: {cand} (pass --attributes none to skip)")
                        break
        elif attributes not in (None, "none"):
            raise CLIError("--attributes is only for s3rec")
        from rich.progress import DownloadColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            dataset = load_dataset(fmt, path, settings, attributes=attr, progress=_ImportBar(bar), fresh=fresh)
        import_s = time.perf_counter() - t0
        console.print(f"{dataset.name}: {len(dataset.log)} interactions, {len(dataset.items)} catalog items "
                      f"(loaded in {import_s:.1f} s)")
        with progress() as bar:
            task = bar.add_task("evaluating", total=None)

            def step(stage: str, done: int, total: Optional[int]) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            result = evaluate_dataset(
                dataset, settings.models, protocols=[p.strip() for p in protocol.split(",") if p.strip()],
                targets=[t.strip() for t in targets.split(",") if t.strip()],
                models=[m.strip() for m in models.split(",") if m.strip()] if models is not None else None, ks=ks,
                batch_size=batch_size, export_dir=export_recs, split_time=when, test_fraction=test_fraction,
                report=step, cold_fraction=cold_fraction, seed=seed,
                cache=settings.data_dir / "cache" / "evaluate" / f"{dataset.fmt}-{dataset.name}",
                command="shelfwise evaluate " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else None)
        result["import_s"] = round(import_s, 1)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        for split in result["splits"]:
            table = Table(title=f"{dataset.name} · {split['name']} · {split['users']} shoppers")
            cols = [f"{m}@{x}" for x in ks[-2:] for m in ("HR", "NDCG")] + ["MRR", "fit s", "rec s"]
            table.add_column("model")
            for c in cols:
                table.add_column(c, justify="right")
            for name, m in split["models"].items():
                table.add_row(name, *[f"{m['metrics'][c]:.4f}" for c in cols[:-2]], f"{m['fit_s']:.1f}",
                              f"{m['recommend_s']:.1f}")
            console.print(table)
        if report is not None:
            path_md = write_report([result], report)
            console.print(f"report: {path_md}  (raw numbers: {report / 'results.json'})")
        if export_recs is not None:
            console.print(f"test-time lists: {export_recs}/ (score with e.g. seqbench.py DATA --recs FILE)")
        console.print(f"wall time {result['wall_s']:.0f} s")


def _parse_time(value: str, option: str = "--split-time") -> float:
    from datetime import datetime, timezone

    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"{option} must be an ISO date/time or unix seconds, got {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


from shelfwise.rules.cli import reports_app, rules_app  # noqa: E402 - merchandising commands
from shelfwise.security.cli import keys_app  # noqa: E402 - API keys

app.add_typer(rules_app, name="rules")
app.add_typer(reports_app, name="reports")
app.add_typer(keys_app, name="keys")


@app.command()
def erase(
    user_id: Optional[str] = typer.Option(None, help="the storefront's user id"),
    session_id: Optional[str] = typer.Option(None, help="an anonymous shopper's session id"),
) -> None:
    """Erase a shopper everywhere (as DELETE /v1/shoppers does) and print the deletion receipt."""
    from shelfwise.privacy.pseudonym import shopper_key

    with friendly():
        if (user_id is None) == (session_id is None):
            raise CLIError("give exactly one of --user-id and --session-id")
        engine = _engine(_settings())
        try:
            receipt = engine.forget_shopper(shopper_key(user_id, session_id),
                                            "user" if user_id is not None else "session")
        finally:
            engine.close()
        typer.echo(json.dumps(receipt, indent=1))


from shelfwise.experiments.cli import experiments_app  # noqa: E402 - online experiments

app.add_typer(experiments_app, name="experiments")

from shelfwise.release_cli import models_app  # noqa: E402 - model registry and releases

app.add_typer(models_app, name="models")

from shelfwise.monitor.cli import monitor as monitor_cmd  # noqa: E402 - drift monitoring
from shelfwise.campaigns.cli import campaign_app  # noqa: E402 - email campaigns

app.add_typer(campaign_app, name="campaign")

app.command("monitor")(monitor_cmd)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
