"""Helpers shared by the contract suites (module name kept unique: tests import it by name)."""

from __future__ import annotations

import os
import uuid


def tag() -> str:
    return f"{os.getpid()}_{uuid.uuid4().hex[:8]}"


def redis_prefix(url: str) -> str:
    return url.rsplit("prefix=", 1)[1]


def kafka_dsn(bootstrap: str, **opts: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in opts.items())
    return f"kafka://{bootstrap}/swtest-{tag()}?group=g{tag()}&group.protocol=consumer&log_level=2{extra}"
