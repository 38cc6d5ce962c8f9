"""MovieLens, Complete Journey and DIGINETICA importers on tiny files written here."""

import gzip

import pytest
from typer.testing import CliRunner

from shelfwise.cli import app
from shelfwise.domain import EventType
from shelfwise.importers import ImportFormatError, import_completejourney, import_diginetica, import_movielens
from shelfwise.service import Shelfwise

FLAGS = "|".join(["0"] * 19)


def genre_flags(*on):
    f = ["0"] * 19
    for i in on:
        f[i] = "1"
    return "|".join(f)


@pytest.fixture
def ml_dir(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.item").write_text(
        f"1|Toy Story (1995)|01-Jan-1995||http://x/1|{genre_flags(3, 4, 5)}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://x/2|{genre_flags(1, 2)}\n"
        f"3|Nameless|||http://x/3|{FLAGS}\n"
        f"4|Casablanca (1942)|01-Jan-1942||http://x/4|{genre_flags(8)}\n", encoding="latin-1")
    with gzip.open(d / "u.data.gz", "wt") as f:
        f.write("7\t1\t5\t881250949\n7\t2\t3\t881250950\n8\t3\t4\t881250000\n8\t1\t1\t881250100\n")
    return d


def test_movielens(settings, ml_dir):
    eng = Shelfwise(settings)
    st = import_movielens(eng, ml_dir)
    assert (st.items, st.stored) == (4, 4)
    log = eng.store.scan()
    rows = {(s, i): (int(k), t) for s, i, k, t in zip(log.shopper, log.item, log.kind, log.ts)}
    assert rows[("7", "1")] == (EventType.purchase_completed, 881250949)  # rating 5
    assert rows[("7", "2")][0] == EventType.product_viewed  # rating 3
    assert rows[("8", "3")][0] == EventType.purchase_completed  # rating 4 is positive
    toy = eng.get_item("1")
    assert toy.title == "Toy Story (1995)" and toy.category == ["Animation"]
    assert toy.tags == ["Animation", "Children's", "Comedy"] and toy.created_at.year == 1995
    assert toy.attributes["release_year"] == 1995
    old = eng.get_item("4")  # released before 1970: outside the catalog's time range, kept as the year only
    assert old.created_at is None and old.attributes["release_year"] == 1942 and old.category == ["Drama"]
    assert import_movielens(eng, ml_dir).duplicates == 4
    eng.close()


def test_movielens_malformed_rating_line(settings, ml_dir):
    with gzip.open(ml_dir / "u.data.gz", "wt") as f:
        f.write("7\t1\t5\t881250949\n7\t2\tfive\t881250950\n")
    eng = Shelfwise(settings)
    with pytest.raises(ImportFormatError, match=r"u.data.gz, line 2: rating must be an integer"):
        import_movielens(eng, ml_dir)
    with gzip.open(ml_dir / "u.data.gz", "wt") as f:
        f.write("7 1 5 881250949\n")
    with pytest.raises(ImportFormatError, match=r"line 1: expected 4 tab-separated fields"):
        import_movielens(eng, ml_dir)
    eng.close()


CJ_HEADER = ("household_id,store_id,basket_id,product_id,quantity,sales_value,retail_disc,coupon_disc,"
             "coupon_match_disc,week,transaction_timestamp\n")


@pytest.fixture
def cj_dir(tmp_path):
    d = tmp_path / "cj"
    d.mkdir()
    (d / "transactions_sample.csv").write_text(
        CJ_HEADER
        + "h1,s1,b1,p1,2.0,3.00,1.00,0.0,0.0,1,2017-01-02 10:00:00-0500\n"
        + "h1,s1,b1,p2,1.0,2.50,0.0,0.0,0.0,1,2017-01-02 10:00:00-0500\n"
        + "h1,s1,b2,p1,0.0,0.00,0.0,0.0,0.0,2,2017-01-09 10:00:00-0500\n"  # adjustment row: skipped
        + "h2,s2,b3,p3,1.0,4.00,0.0,0.0,0.0,3,2017-01-16 12:30:00-0500\n")
    (d / "products.csv").write_text(
        "product_id,manufacturer_id,department,brand,product_category,product_type,package_size\n"
        "p1,69,GROCERY,Private,\"COOKIES, CONES\",SPECIALTY COOKIES,14 OZ\n"
        "p2,2,MISCELLANEOUS,National,,,\n"
        "p9,2,PASTRY,National,BREAD,ROLLS,\n")  # never sold: not imported by default
    return d


def test_completejourney(settings, cj_dir):
    eng = Shelfwise(settings)
    st = import_completejourney(eng, cj_dir)
    assert st.stored == 3 and st.skipped == 1
    assert eng.catalog.ids() == {"p1", "p2", "p3"}  # p3 is sold but not in products.csv
    p1 = eng.get_item("p1")
    assert p1.category == ["GROCERY", "COOKIES, CONES", "SPECIALTY COOKIES"] and p1.brand == "Private"
    assert p1.price == pytest.approx(2.0)  # (3.00 + 1.00 discount) / 2 units: shelf price
    assert eng.get_item("p2").category == ["MISCELLANEOUS"]
    log = eng.store.scan()
    h1 = [(str(i), str(o), int(q), p) for s, i, o, q, p in zip(log.shopper, log.item, log.order, log.quantity,
                                                                log.price) if s == "h1"]
    assert h1 == [("p1", "b1", 2, 1.5), ("p2", "b1", 1, 2.5)]  # basket = order; unit price paid
    assert log.ts.min() == pytest.approx(1483369200)  # 2017-01-02 10:00 -05:00
    assert import_completejourney(eng, cj_dir).duplicates == 3
    assert import_completejourney(eng, cj_dir, all_products=True).items == 3  # the whole products.csv
    assert "p9" in eng.catalog.ids()
    eng.close()


def test_completejourney_bad_timestamp(settings, cj_dir):
    (cj_dir / "transactions_sample.csv").write_text(
        CJ_HEADER + "h1,s1,b1,p1,1.0,3.00,0.0,0.0,0.0,1,2017-01-02 10:00:00-0500\n"
        + "h1,s1,b1,p2,1.0,2.50,0.0,0.0,0.0,1,yesterday\n")
    eng = Shelfwise(settings)
    with pytest.raises(ImportFormatError, match=r"transactions_sample.csv, line 3: transaction_timestamp"):
        import_completejourney(eng, cj_dir)
    eng.close()


@pytest.fixture
def dg_dir(tmp_path):
    d = tmp_path / "dg"
    d.mkdir()
    (d / "train-purchases.csv").write_text(
        "sessionId;userId;timeframe;eventdate;ordernumber;itemId\n"
        "150;18278;17100868;2016-05-06;16421;25911\n"
        "151;NA;6454547;2016-05-06;16290;175874\n"
        "151;NA;6454547;2016-05-06;16290;25911\n")
    (d / "product-categories.csv").write_text("itemId;categoryId\n25911;1096\n175874;7\n999;1\n")
    return d


def test_diginetica(settings, dg_dir):
    eng = Shelfwise(settings)
    st = import_diginetica(eng, dg_dir)
    assert st.stored == 3 and eng.catalog.ids() == {"25911", "175874"}
    assert eng.get_item("25911").category == ["1096"]
    log = eng.store.scan()
    assert sorted(set(log.shopper.tolist())) == ["18278", "session:151"]  # anonymous rows: the session
    assert sorted(set(log.order.tolist())) == ["16290", "16421"]
    assert log.ts.min() == pytest.approx(1462492800 + 6454.547)
    eng.close()


def test_diginetica_wrong_field_count(settings, dg_dir):
    (dg_dir / "train-purchases.csv").write_text(
        "sessionId;userId;timeframe;eventdate;ordernumber;itemId\n150;18278;17100868;2016-05-06;16421\n")
    eng = Shelfwise(settings)
    with pytest.raises(ImportFormatError, match=r"train-purchases.csv, line 2: expected 6"):
        import_diginetica(eng, dg_dir)
    eng.close()


def test_cli_import_directories(settings, ml_dir, cj_dir, dg_dir, monkeypatch):
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    for fmt, d in (("movielens", ml_dir), ("completejourney", cj_dir), ("diginetica", dg_dir)):
        r = runner.invoke(app, ["import", fmt, str(d)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["import", "movielens", str(dg_dir)])
    assert r.exit_code == 2 and "u.data" in r.output and "Traceback" not in r.output
