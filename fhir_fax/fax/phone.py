"""E.164 fax numbers: strict form first, then libphonenumber's plausibility checks."""

from __future__ import annotations

import re

import phonenumbers

E164 = re.compile(r"\+[1-9][0-9]{1,14}")  # matched whole (fullmatch): no trailing newline, ASCII digits


class NumberProblem(ValueError):
    """Why a value is not an acceptable fax number (the message says how to fix it)."""


def check_fax_number(value: object, *, require_valid: bool = False) -> str:
    """Return ``value`` if it is an E.164 number a fax could be sent to, else raise NumberProblem.

    By default the number must be *possible* (right length for its country); the hosted
    service's own example ``+12223334444`` is possible but not assigned, and is accepted.
    ``require_valid`` also demands libphonenumber's ``is_valid_number`` (an assigned range).
    """
    if not isinstance(value, str) or not E164.fullmatch(value):
        raise NumberProblem(
            f"{value!r} is not in E.164 form: write '+', the country code and the number, "
            "up to 15 digits, without spaces or punctuation (e.g. +12223334444)."
        )
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as error:
        raise NumberProblem(f"{value} is not a phone number ({error}).") from None
    if not phonenumbers.is_possible_number(parsed):
        raise NumberProblem(f"{value} has the wrong number of digits for its country code.")
    if require_valid and not phonenumbers.is_valid_number(parsed):
        raise NumberProblem(f"{value} is not an assigned number range (the server requires valid numbers).")
    return value
