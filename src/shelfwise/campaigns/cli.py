"""``shelfwise campaign run``: an email's rails for every shopper of a file or segment, written for the mailer
(JSONL or CSV, each row with its signed token). Registered on the main app in ``shelfwise/cli.py``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from shelfwise.console import CLIError, console, friendly, progress

campaign_app = typer.Typer(help="Email campaigns: rails for every shopper, signed tokens for open time.",
                           no_args_is_help=True)


@campaign_app.command("run")
def run(
    placement: str = typer.Option(..., help="the email (campaign.emails), e.g. email_weekly"),
    shoppers: Optional[Path] = typer.Option(None, help="file of shopper ids, one a line (or a CSV's first column)"),
    segment: Optional[str] = typer.Option(None, help="every shopper of this segment (events' context.segments)"),
    out: Path = typer.Option(..., help="the mailer's file (written whole or not at all)"),
    fmt: str = typer.Option("", "--format", help="jsonl or csv (default: from --out's suffix, else jsonl)"),
    campaign_id: Optional[str] = typer.Option(None, "--id", help="campaign id in every row and token (default: "
                                                                 "the time and a random tag)"),
) -> None:
    """Generate an email's rails for every shopper: de-duplicated across the email's rails and against what the
    shop showed them lately, within the email's frequency caps; one row per shopper with a signed token for
    `GET /v1/email/{token}`, which re-checks stock and price when the email is opened."""
    from shelfwise.campaigns.run import Campaign, CampaignError, read_shoppers, segment_shoppers, write_rows
    from shelfwise.service import Shelfwise
    from shelfwise.settings import load_settings

    with friendly():
        if (shoppers is None) == (segment is None):
            raise CLIError("give --shoppers FILE or --segment NAME (one of them)")
        kind = (fmt or out.suffix.lstrip(".") or "jsonl").lower()
        if kind not in ("jsonl", "csv"):
            raise CLIError(f"--format must be jsonl or csv, not {kind!r}")
        if not out.parent.is_dir():
            raise CLIError(f"--out: no directory {str(out.parent)!r}")
        settings = load_settings()
        if placement not in settings.campaign.emails:
            raise CLIError(f"unknown placement {placement!r} for an email; known: {sorted(settings.campaign.emails)} "
                           "(campaign.emails)")
        try:
            who = read_shoppers(shoppers) if shoppers is not None else []
        except CampaignError as e:
            raise CLIError(str(e)) from None
        engine = Shelfwise(settings)
        try:
            try:
                who = who or segment_shoppers(engine, segment or "")
                job = Campaign(engine, placement, campaign_id)
            except CampaignError as e:
                raise CLIError(str(e)) from None
            t0 = time.perf_counter()
            with progress() as bar:
                task = bar.add_task(f"{placement} {job.id}", total=len(who))
                n = write_rows(job.run(who, lambda k: bar.advance(task, k)), out, kind, placement, job.id)
            dt = time.perf_counter() - t0
            console.print(f"{n} shoppers in {dt:.1f} s ({n / max(dt, 1e-9):.0f}/s) → {out} (campaign {job.id})")
        finally:
            engine.close()
