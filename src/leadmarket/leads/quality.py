"""Quality and fraud signals of a new lead, each with its reason, combined into a 0–100 score
that buyers see with the preview and sellers see on their own leads."""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType

from leadmarket.leads.reference import is_disposable_email_domain, regions_for_area_code
from leadmarket.leads.schemas import ConsumerPhone


@dataclass(frozen=True)
class Signal:
    code: str
    message: str
    impact: int

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "impact": self.impact}


_NOT_A_PERSON = {
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE,
    PhoneNumberType.SHARED_COST,
    PhoneNumberType.UAN,
    PhoneNumberType.PAGER,
    PhoneNumberType.VOICEMAIL,
}


def contact_signals(*, email: str, phone_e164: str, region: str) -> list[Signal]:
    signals: list[Signal] = []
    domain = email.rsplit("@", 1)[-1]
    if is_disposable_email_domain(domain):
        signals.append(Signal("disposable_email", "The email address is a disposable one.", -40))
    if isinstance(phone_e164, ConsumerPhone):  # validated moments ago, type already known
        line_type, area_code = phone_e164.line_type, phone_e164.area_code
    else:
        number = phonenumbers.parse(phone_e164)
        line_type, area_code = phonenumbers.number_type(number), str(number.national_number)[:3]
    if line_type in _NOT_A_PERSON:
        signals.append(
            Signal("non_personal_phone", "The phone is a toll-free or service number.", -40)
        )
    elif line_type == PhoneNumberType.VOIP:
        signals.append(Signal("voip_phone", "The phone is a VoIP line.", -15))
    elif line_type == PhoneNumberType.FIXED_LINE:
        signals.append(Signal("landline", "The phone is a landline.", -5))
    regions = regions_for_area_code(area_code)
    if regions and region not in regions:
        signals.append(
            Signal(
                "area_code_mismatch",
                "The phone's area code belongs to another state or province.",
                -10,
            )
        )
    return signals


def velocity_signals(
    *, seller_recent: int, seller_limit: int, ip_recent: int, ip_limit: int
) -> list[Signal]:
    signals: list[Signal] = []
    if seller_recent >= seller_limit:
        signals.append(
            Signal(
                "seller_burst", "The seller posted unusually many leads in the last minute.", -10
            )
        )
    if ip_recent >= ip_limit:
        signals.append(
            Signal(
                "ip_velocity",
                "Several leads came from the consumer's network address within the hour.",
                -25,
            )
        )
    return signals


def score(signals: list[Signal]) -> int:
    return max(0, min(100, 100 + sum(s.impact for s in signals)))
