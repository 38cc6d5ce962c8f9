"""Model store, directory backend: one folder per version and a CURRENT pointer swapped atomically."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path


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

    def publish(self, version: str) -> Path:
        """Make a built version visible and current."""
        partial = self.root / f".{version}.partial"
        final = self.root / version
        if partial.exists():
            partial.rename(final)
        tmp = self.root / "CURRENT.tmp"
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

    def prune(self, keep: int = 5) -> None:
        current = self.current()
        for v in self.versions()[:-keep]:
            if v != current:
                shutil.rmtree(self.root / v, ignore_errors=True)
