"""Whole numbers from outside (query parameters, headers, URL parts, carrier events), read by one rule.

Python's own tests are wider than they look: ``"²".isdigit()`` is True but ``int("²")`` raises,
``int("٣")`` is 3, ``int(" 7\\n")`` is 7, ``int("1_0")`` is 10, and a string of more than 4300
digits raises. Every number a caller or a carrier sends is read here instead: ASCII digits only,
the whole string, at most 18 of them (so the value also fits a database integer).
"""

from __future__ import annotations

import re

ASCII_INTEGER = re.compile(r"[0-9]{1,18}")


def ascii_int(text: object) -> int | None:
    """The value of ``text`` when it is a string of 1 to 18 ASCII digits, else None."""
    if not isinstance(text, str) or ASCII_INTEGER.fullmatch(text) is None:
        return None
    return int(text)
