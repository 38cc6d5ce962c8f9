"""What every command-line module shares: the console (stderr), user-facing errors and progress bars."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


class CLIError(Exception):
    """A problem the user can fix; printed as a message, never as a traceback."""


@contextmanager
def friendly() -> Iterator[None]:
    try:
        yield
    except CLIError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    except ValidationError as e:
        lines = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        console.print(f"[red]invalid settings:[/red] {lines}")
        raise typer.Exit(2) from None
    except (FileNotFoundError, PermissionError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


