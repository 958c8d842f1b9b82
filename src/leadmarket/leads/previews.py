"""What a buyer may see of a lead before buying it (promise L6): vertical, coarse location, age
band, the preview attributes, quality and the sale terms; never a name, email, phone, street or
exact birth date, which are not on the :class:`Lead` row at all."""

from __future__ import annotations

from leadmarket.leads.schemas import PreviewOut, QualityOut, SaleOut
from leadmarket.models import Lead
from leadmarket.verticals.registry import get_vertical

AGE_BANDS = (
    (18, "14-17"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (55, "45-54"),
    (65, "55-64"),
)


def age_band(age: int) -> str:
    for upper, label in AGE_BANDS:
        if age < upper:
            return label
    return "65+"


def quality_of(lead: Lead) -> QualityOut:
    return QualityOut(score=lead.quality_score, reasons=list(lead.quality_reasons))


def preview_of(lead: Lead) -> PreviewOut:
    vertical = get_vertical(lead.vertical)
    return PreviewOut(
        vertical=lead.vertical,
        vertical_name=vertical.name if vertical else lead.vertical,
        country=lead.country,
        region=lead.region,
        city=lead.city,
        postal_prefix=lead.postal_prefix,
        age_band=lead.age_band,
        attributes=dict(lead.preview_attributes),
        created_at=lead.created_at,
        quality=quality_of(lead),
    )


def sale_of(lead: Lead, *, show_reserve: bool) -> SaleOut:
    return SaleOut(
        mode=lead.sale_mode,
        currency=lead.currency,
        reserve_cents=lead.reserve_cents if show_reserve else None,
        buy_now_cents=lead.buy_now_cents,
        price_cents=lead.price_cents,
        duration_minutes=lead.duration_minutes,
        exclusive=lead.exclusive,
        max_buyers=lead.max_buyers,
        ends_at=lead.auction_ends_at,
    )
