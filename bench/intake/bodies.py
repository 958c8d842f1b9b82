"""Valid, unique lead bodies for every vertical, generated before any timing starts.

Every body has its own email, phone and client address, so duplicate detection never refuses
one and the velocity signals see a realistic spread of consumers. Places pair a city with a
postal code and an area code of the same state or province, so address checks pass."""

from __future__ import annotations

import datetime as dt
import json
import random
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leadmarket.verticals.registry import FieldSpec, Vertical, all_verticals


@dataclass(frozen=True)
class Place:
    country: str
    region: str
    city: str
    postal_code: str
    area_code: str
    street: str


PLACES = (
    Place("US", "CA", "Fresno", "93650", "559", "Olive Ave"),
    Place("US", "NY", "New York", "10001", "212", "W 34th St"),
    Place("US", "TX", "Austin", "78701", "512", "Congress Ave"),
    Place("US", "IL", "Chicago", "60601", "312", "N Michigan Ave"),
    Place("US", "FL", "Miami", "33101", "305", "Biscayne Blvd"),
    Place("US", "WA", "Seattle", "98101", "206", "Pine St"),
    Place("CA", "ON", "Toronto", "M5V 2T6", "416", "King St W"),
    Place("CA", "BC", "Vancouver", "V6B 1A1", "604", "Granville St"),
)
# Central office codes that are valid in every area code above (N11 and 555 are not).
EXCHANGES = tuple(n for n in range(200, 1000) if n % 100 != 11 and n != 555)
FIRST_NAMES = ("Ana", "Ben", "Chloé", "Dmitri", "Ewa", "Farid", "Grace", "Hiro", "Inès", "José")
LAST_NAMES = ("Silva", "Nguyen", "O'Brien", "Kowalski", "García", "Okafor", "Larsen", "Kim")
EMAIL_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "icloud.com", "example.com")
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/128.0 Safari/537.36",
)
PHONE_STYLES = ("+1{a}{e}{n:04d}", "({a}) {e}-{n:04d}", "{a}-{e}-{n:04d}", "{a}{e}{n:04d}")


def _phone(index: int, place_count: int, area_code: str, rng: random.Random) -> str:
    """A number no other index gets: the index picks the exchange and the line."""
    slot = index // place_count
    exchange = EXCHANGES[(slot // 10_000) % len(EXCHANGES)]
    return rng.choice(PHONE_STYLES).format(a=area_code, e=exchange, n=slot % 10_000)


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _attribute(spec: FieldSpec, rng: random.Random) -> Any:
    if spec.enum:
        return rng.choice(spec.enum)
    if spec.type == "boolean":
        return rng.random() < 0.5
    if spec.type in ("integer", "number"):
        low = int(spec.minimum) if spec.minimum is not None else 0
        high = int(spec.maximum) if spec.maximum is not None else low + 1000
        value = rng.randint(low, min(high, max(low * 20, low + 50)))
        return value if spec.type == "integer" else float(value)
    text = "Needs a quote before the end of the month, call after 5pm"
    return text[: spec.max_length or len(text)]


def _attributes(vertical: Vertical, rng: random.Random) -> dict[str, Any]:
    return {
        spec.name: _attribute(spec, rng)
        for spec in vertical.fields
        if spec.required or rng.random() < 0.6
    }


def _sale(rng: random.Random) -> dict[str, Any]:
    exclusive = rng.random() < 0.7
    sale: dict[str, Any] = {"exclusive": exclusive}
    if not exclusive:
        sale["max_buyers"] = rng.randint(2, 4)
    if rng.random() < 0.7:
        reserve = rng.randrange(500, 5000, 100)
        sale |= {
            "mode": "auction",
            "reserve_cents": reserve,
            "buy_now_cents": reserve * 3,
            "duration_minutes": rng.choice((30, 60, 240)),
        }
    else:
        sale |= {"mode": "fixed", "price_cents": rng.randrange(500, 9000, 100)}
    return sale


def lead_bodies(
    start: int, count: int, *, seller_username: str, seed: int = 7
) -> Iterator[dict[str, Any]]:
    """``count`` bodies numbered from ``start``; distinct numbers never share an email or phone."""
    rng = random.Random(seed * 1_000_003 + start)
    verticals = all_verticals()
    now = dt.datetime.now(dt.UTC)
    for index in range(start, start + count):
        vertical = verticals[index % len(verticals)]
        place = PLACES[index % len(PLACES)]
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        local = _ascii(f"{first}.{last}".lower().replace("'", ""))
        yield {
            "vertical": vertical.slug,
            "contact": {
                "first_name": first,
                "last_name": last,
                "email": f"{local}.{index}@{rng.choice(EMAIL_DOMAINS)}",
                "phone": _phone(index, len(PLACES), place.area_code, rng),
                "birth_date": dt.date(
                    rng.randint(1940, 2004), rng.randint(1, 12), rng.randint(1, 28)
                ).isoformat(),
                "address": {
                    "street": f"{rng.randint(1, 9999)} {place.street}",
                    "city": place.city,
                    "region": place.region,
                    "postal_code": place.postal_code,
                    "country": place.country,
                },
            },
            "attributes": _attributes(vertical, rng),
            "consent": {
                "disclosure_text": vertical.consent_text_for(seller_username),
                "page_url": f"https://quotes.example.com/{vertical.slug}?utm_source=bench",
                "ip": f"{rng.randint(11, 199)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
                f"{rng.randint(1, 254)}",
                "user_agent": rng.choice(USER_AGENTS),
                "given_at": (now - dt.timedelta(seconds=rng.randint(60, 36_000))).isoformat(),
            },
            "sale": _sale(rng),
        }


def write_shards(
    directory: Path, name: str, bodies: Iterator[dict[str, Any]], shards: int
) -> list[Path]:
    """One JSON body per line, dealt round-robin over ``shards`` files (one per wrk thread, so
    no two threads ever send the same body)."""
    paths = [directory / f"{name}-{i}.jsonl" for i in range(shards)]
    handles = [path.open("w", encoding="utf-8") for path in paths]
    try:
        for i, body in enumerate(bodies):
            handles[i % shards].write(json.dumps(body, separators=(",", ":")) + "\n")
    finally:
        for handle in handles:
            handle.close()
    return paths
