"""The API's parsing and rendering shortcuts: the same bytes and values as the plain way, only made once / faster."""

import asyncio
import json
from dataclasses import replace

import orjson
import pytest

from shelfwise.api.models import BadBody, read_json
from shelfwise.api.render import rendered, slot_dicts, slots_json
from shelfwise.request import Answer, Recommendation


class _Body:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def body(self) -> bytes:
        return self.raw


def parse(raw: bytes):
    return asyncio.run(read_json(_Body(raw)))  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [
    b'{"items": ["a", "b"], "k": 12, "x": -0.0, "y": 0.1, "z": 1.5e-3, "n": null, "t": true}',
    b'[1, 2, {"a": {"b": [3]}}]',
    b'{"a": 1, "a": 2}',
    b'{"big": 123456789012345678901234567890, "neg": -9223372036854775809}',  # exact, not rounded to floats
    b'{"huge": 1e400}',  # the standard parser's inf (the models then refuse it, naming the field)
    b'"\\ud800"',  # a lone surrogate: the standard parser keeps it (the models refuse it)
    b'\xef\xbb\xbf{"a": 1}',  # a byte-order mark
    '{"a": "é"}'.encode("utf-16"),
])
def test_bodies_parse_as_the_standard_parser_reads_them(raw):
    got = parse(raw)
    want = json.loads(raw)
    assert repr(got) == repr(want)  # repr: 0.0 and -0.0, ints and floats, nan told apart
    if b"big" in raw:
        assert got["big"] == 123456789012345678901234567890 and type(got["neg"]) is int


@pytest.mark.parametrize("raw", [b'{"x": NaN}', b'[Infinity]', b'{not json', b"   ", b'[' * 100_000])
def test_bad_bodies_are_refused(raw):
    with pytest.raises(BadBody):
        parse(raw)


def answer(n: int, reasons=("evidence", "popular")) -> Answer:
    return Answer([Recommendation(f"i{i}", 1.0 / (i + 3), ["als", "sequence"], {"als": 0.5} if i % 2 else None,
                                  reason=reasons[i % len(reasons)], fallback=i % 3 == 0) for i in range(n)], "search")


def test_an_answer_renders_as_its_slot_dicts_once():
    a = answer(200)
    body = orjson.dumps({"items": slots_json(a, False)})
    assert orjson.loads(body)["items"] == slot_dicts(a, False)
    assert orjson.loads(body)["items"][1] == {"item_id": "i1", "score": round(1.0 / 4, 6),
                                              "sources": ["als", "sequence"], "reason": "popular", "fallback": False}
    assert slots_json(a, False) is slots_json(a, False)  # made once
    assert orjson.loads(orjson.dumps(slots_json(a, True))) == slot_dicts(a, True)  # explain: each explanation too
    got = rendered(a)
    assert got.reasons == {"evidence": 100, "popular": 100}
    assert got.shown == {f"i{i}" for i in range(200)} and got.fallback is False
    assert rendered(answer(3, reasons=("popular",))).fallback is False  # slot 1 is no fallback
    empty = Answer([], "search")
    assert rendered(empty).fallback is True and orjson.dumps(slots_json(empty, False)) == b"[]"


def test_a_copy_of_an_answer_renders_its_own_slots():
    a = answer(50)
    slots_json(a, False)
    first = replace(a, items=a.items[:5])  # what the service does to log an answer's shown part
    assert first.rendered is None and rendered(first).shown == {f"i{i}" for i in range(5)}
    assert orjson.loads(orjson.dumps(slots_json(first, False))) == slot_dicts(a, False)[:5]
    assert a == replace(a, degraded=[]) and rendered(a).shown == {f"i{i}" for i in range(50)}  # not compared
