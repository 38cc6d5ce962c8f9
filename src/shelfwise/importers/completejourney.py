"""The Complete Journey (84.51°, via the ``completejourney`` R package): transactions + products (CSV).

Each transaction line item becomes a ``purchase_completed`` of one product with its quantity and the unit price
paid, in the order ``basket_id`` (a basket is an order), at the real timestamp. Rows with quantity or sales value
<= 0 (returns, adjustments) are skipped and counted. Catalog items get department > category > type as their
category path, the National/Private label as brand and, as price, the median shelf price (before discounts)
seen in the transactions. Only products that appear in the transactions are put in the catalog unless
``all_products``. Event ids are ``completejourney:<line>``.
"""

from __future__ import annotations

import csv
import statistics
from datetime import datetime
from pathlib import Path
from typing import Iterator

from shelfwise.domain import Event, EventContext, Item, PurchasedItem
from shelfwise.importers.base import (ImportFormatError, ImportStats, LineReader, Loader, Progress, check_id,
                                      find_file, parse_float, validated)

TRANSACTION_COLUMNS = ["household_id", "store_id", "basket_id", "product_id", "quantity", "sales_value",
                       "retail_disc", "coupon_disc", "coupon_match_disc", "week", "transaction_timestamp"]
PRODUCT_COLUMNS = ["product_id", "manufacturer_id", "department", "brand", "product_category", "product_type",
                   "package_size"]


def _records(reader: LineReader, required: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header naming at least ``required``."""
    path = reader.path
    lines = iter(reader)
    rows = csv.reader(line for _, line in lines)
    try:
        header = next(rows)
    except StopIteration:
        raise ImportFormatError(path, 1, "empty file (expected a CSV header)") from None
    except csv.Error as e:
        raise ImportFormatError(path, 1, f"bad CSV: {e}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise ImportFormatError(path, 1, f"header lacks column(s) {', '.join(missing)}")
    lineno = 1
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            raise ImportFormatError(path, lineno + 1, f"bad CSV: {e}") from None
        lineno = rows.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise ImportFormatError(path, lineno, f"expected {len(header)} comma-separated fields, got {len(row)}")
        yield lineno, dict(zip(header, row))


def _timestamp(value: str, path: Path, lineno: int) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S%z")
    except ValueError:
        raise ImportFormatError(path, lineno, f"transaction_timestamp {value!r} is not like "
                                              "2017-01-28 14:06:53-0500") from None


def _line(row: dict[str, str], path: Path, lineno: int) -> tuple[int, float, float] | None:
    """(quantity, unit price paid, unit shelf price) or None for a return / adjustment row."""
    qty = parse_float(row["quantity"], "quantity", path, lineno)
    sales = parse_float(row["sales_value"], "sales_value", path, lineno)
    disc = parse_float(row["retail_disc"] or "0", "retail_disc", path, lineno)
    if qty <= 0 or sales <= 0:
        return None
    q = max(1, round(qty))
    return q, round(sales / qty, 4), round((sales + abs(disc)) / qty, 4)


def scan_prices(path: Path) -> dict[str, float]:
    """Median unit shelf price of every product sold (pass 1, so the catalog exists before the events)."""
    prices: dict[str, list[float]] = {}
    with LineReader(path) as reader:
        for lineno, row in _records(reader, TRANSACTION_COLUMNS):
            product = check_id(row["product_id"], "product_id", path, lineno)
            line = _line(row, path, lineno)
            prices.setdefault(product, [])
            if line is not None:
                prices[product].append(line[2])
    return {p: (statistics.median(v) if v else 0.0) for p, v in prices.items()}


def parse_products(reader: LineReader, prices: dict[str, float] | None) -> Iterator[Item]:
    path = reader.path
    for lineno, row in _records(reader, PRODUCT_COLUMNS):
        product = check_id(row["product_id"], "product_id", path, lineno)
        if prices is not None and product not in prices:
            continue
        path_parts = [row[c].strip() for c in ("department", "product_category", "product_type")]
        category = []
        for part in path_parts:  # a path stops at the first missing level
            if not part:
                break
            category.append(part)
        price = (prices or {}).get(product) or None
        title = " ".join(x for x in (row["product_type"].strip().title(), row["package_size"].strip()) if x)
        yield validated(lambda: Item(
            id=product, title=title, category=category, brand=row["brand"].strip() or None, price=price,
            attributes={k: row[k] for k in ("manufacturer_id", "package_size") if row[k]}), path, lineno)


def parse_transactions(reader: LineReader, loader: Loader) -> Iterator[Event]:
    path = reader.path
    for lineno, row in _records(reader, TRANSACTION_COLUMNS):
        household = check_id(row["household_id"], "household_id", path, lineno)
        basket = check_id(row["basket_id"], "basket_id", path, lineno)
        product = check_id(row["product_id"], "product_id", path, lineno)
        ts = _timestamp(row["transaction_timestamp"], path, lineno)
        line = _line(row, path, lineno)
        if line is None:
            loader.stats.skipped += 1
            continue
        qty, paid, _ = line
        loader.ensure_item(product)
        yield validated(lambda: Event(
            event_id=f"completejourney:{lineno}", type="purchase_completed", user_id=household, order_id=basket,
            items=[PurchasedItem(item_id=product, quantity=qty, price=paid)], timestamp=ts, context=EventContext(),
            properties={"store_id": row["store_id"]}), path, lineno)


def import_completejourney(engine, directory: Path, progress: Progress | None = None,
                           all_products: bool = False) -> ImportStats:
    directory = Path(directory)
    transactions = find_file(directory, "transactions_sample.csv", "transactions.csv")
    loader = Loader(engine, "completejourney", progress)
    prices = scan_prices(transactions)
    try:
        products: Path | None = find_file(directory, "products.csv")
    except FileNotFoundError:
        products = None
        loader.stats.notes.append("no products.csv: products imported without metadata")
    if products is not None:
        with LineReader(products) as reader:
            loader.items(parse_products(reader, None if all_products else prices))
    # products sold but missing from products.csv still get their observed price
    missing = [Item(id=p, price=v or None) for p, v in prices.items() if p not in loader.known_items]
    loader.items(missing)
    with LineReader(transactions) as reader:
        loader.events(parse_transactions(reader, loader), reader)
    if loader.stats.skipped:
        loader.stats.notes.append(f"{loader.stats.skipped} return/adjustment rows (quantity or sales <= 0) skipped")
    return loader.finish()
