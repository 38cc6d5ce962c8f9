"""The exposure log's move from a row per slot to a row per answer (rules/log.py), when two processes do it at once."""

import sqlite3

from shelfwise.rules import log as xlog
from shelfwise.rules.log import migrated, slot_rows

OLD = ("CREATE TABLE exposures (request_id TEXT NOT NULL, ts REAL NOT NULL, shopper TEXT, placement TEXT NOT NULL, "
       "position INTEGER NOT NULL, item_id TEXT NOT NULL, score REAL, model_version TEXT, rules TEXT)")


def answers(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        got = db.execute("SELECT request_id, ts, shopper, placement, items, scores, propensities FROM exposures "
                         "ORDER BY rowid").fetchall()
    db.close()
    return got


def test_a_log_migrated_by_another_process_meanwhile_is_left_as_it_is(tmp_path, monkeypatch):
    path = tmp_path / "log.db"
    with sqlite3.connect(path) as db:
        db.execute(OLD)
        db.executemany("INSERT INTO exposures VALUES (?,?,?,?,?,?,?,?,?)",
                       [("r1", 1.0, "u", "homepage", 0, "a", 0.9, "m", ""),
                        ("r1", 1.0, "u", "homepage", 1, "b", 0.5, "m", "")])
    db.close()
    other = sqlite3.connect(path)
    stale = xlog._slot_columns(other)  # what a second process saw before the first migrated
    other.close()
    migrated(path)
    once = answers(path)
    assert [s[5] for a in once for s in slot_rows(*a)] == ["a", "b"]
    real = xlog._slot_columns
    calls = []

    def first_stale(db):  # the second process: its first look is from before, its look inside the transaction now
        calls.append(1)
        return stale if len(calls) == 1 else real(db)

    monkeypatch.setattr(xlog, "_slot_columns", first_stale)
    migrated(path)
    assert len(calls) == 2 and answers(path) == once  # not renamed and rebuilt from the answers as if they were slots
