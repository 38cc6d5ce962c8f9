"""Model store, directory backend: one folder per version and a CURRENT pointer swapped atomically."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


class DirectoryModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def new_version(self) -> tuple[str, Path]:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        version = f"v{stamp}"
        path = self.root / f".{version}.partial"
        path.mkdir(parents=True)
        return version, path

    def store(self, version: str) -> Path:
        """Make a built version visible (loadable by its name) without making it current."""
        partial = self.root / f".{version}.partial"
        final = self.root / version
        if partial.exists():
            partial.rename(final)
        return final

    def publish(self, version: str) -> Path:
        """Make a built version visible and current."""
        final = self.store(version)
        if not final.is_dir():
            raise KeyError(version)
        tmp = self.root / f"CURRENT.{os.getpid()}.tmp"
        tmp.write_text(version)
        os.replace(tmp, self.root / "CURRENT")
        return final

    def current(self) -> str | None:
        p = self.root / "CURRENT"
        if not p.exists():
            return None
        v = p.read_text().strip()
        return v if (self.root / v).is_dir() else None

    def path(self, version: str) -> Path:
        return self.root / version

    def versions(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("v"))

    def prune(self, keep: int = 5, protect: tuple[str, ...] = ()) -> None:
        """Remove all but the newest ``keep`` versions, never the current one nor those in ``protect``."""
        current = self.current()
        for v in self.versions()[:-keep]:
            if v != current and v not in protect:
                shutil.rmtree(self.root / v, ignore_errors=True)

    # ---- a training run in progress (so the API can say which model is expected next) -------------------
    def training_started(self, expected_s: float, what: str, pid: int | None = None) -> None:
        self._write_status({"state": "running", "pid": pid or os.getpid(), "started_at": time.time(),
                            "expected_s": round(expected_s), "what": what})

    def training_finished(self, version: str | None, error: str | None = None) -> None:
        status = self.training() or {}
        status.update(state="failed" if error else "done", finished_at=time.time(), version=version, error=error)
        self._write_status(status)

    def training(self) -> dict[str, Any] | None:
        """The last training run started here: state running / done / failed (a running one whose process has
        gone is reported failed)."""
        p = self.root / "TRAINING.json"
        try:
            status = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        if status.get("state") == "running" and not _alive(int(status.get("pid", 0))):
            status.update(state="failed", error="the training process ended without publishing")
        return status

    def _write_status(self, status: dict[str, Any]) -> None:
        tmp = self.root / f".TRAINING.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.root / "TRAINING.json")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
