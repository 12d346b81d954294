"""Who a received fax is about, and who sent it: suggestions on the triage Task, never a filing.

The fax's text is read page by page (the PDF text layer, else Tesseract OCR; ``inbound_document.read_texts``,
in the sandbox). Then, without scanning every patient:

- dates in the text (``04/17/1958``, ``1958-04-17``, ``17 Apr 1958``, ``April 17, 1958``; OCR's O-for-0 and
  l-for-1 mended) select the patients born on one of them;
- identifier-like words (letters and digits, with a digit) select the patients with that identifier (an MRN);
- each candidate is scored on what the text holds: its identifier (0.6), its birth date (0.3), its family name
  (0.25) and a given name (0.15), names compared forgivingly (OCR misreads a letter or two). A candidate is
  proposed only with an identifier, or a birth date and a family name: a name alone is too common.

Each suggestion carries a confidence (the score, at most 0.99) and its evidence: the words found and their page.
The sender is proposed from the caller's number: the Organization, Practitioner, PractitionerRole or
HealthcareService whose fax telecom it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from difflib import SequenceMatcher
from typing import Any

from .terminology import (
    SUGGESTED_PATIENT,
    SUGGESTED_SENDER,
    SUGGESTION_CONFIDENCE_EXTENSION,
    SUGGESTION_EVIDENCE_EXTENSION,
    TASK_CODE_SYSTEM,
)

MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",), ("jun", "june"),
            ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"), ("oct", "october"),
            ("nov", "november"), ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}  # fmt: skip
MONTH = "(" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
DATE_PATTERNS = (
    (re.compile(r"\b(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})\b"), ("y", "m", "d")),
    (re.compile(r"\b(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})\b"), ("m", "d", "y")),  # US order first, then D/M/Y
    (re.compile(r"\b(\d{1,2})\s+" + MONTH + r",?\s+(\d{4})\b", re.IGNORECASE), ("d", "b", "y")),
    (re.compile(r"\b" + MONTH + r"\s+(\d{1,2}),?\s+(\d{4})\b", re.IGNORECASE), ("b", "d", "y")),
)
IDENTIFIER_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]{2,39}")
WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*", re.UNICODE)
OCR_DIGITS = str.maketrans({"O": "0", "o": "0", "D": "0", "l": "1", "I": "1", "|": "1", "S": "5", "B": "8"})
MAX_CANDIDATES, MAX_WORDS = 200, 2000
NAME_LIKENESS = 0.84  # SequenceMatcher ratio a word must reach to count as a (misread) name
SUGGESTIONS = 3
SENDER_TYPES = ("Organization", "HealthcareService", "PractitionerRole", "Practitioner")


@dataclass
class Suggestion:
    reference: str
    display: str
    confidence: float
    evidence: list[str] = field(default_factory=list)
    kind: str = SUGGESTED_PATIENT

    def task_input(self) -> dict[str, Any]:
        display = "Suggested patient" if self.kind == SUGGESTED_PATIENT else "Suggested sender"
        return {
            "type": {"coding": [{"system": TASK_CODE_SYSTEM, "code": self.kind, "display": display}]},
            "valueReference": {"reference": self.reference, "display": self.display},
            "extension": [
                {"url": SUGGESTION_CONFIDENCE_EXTENSION, "valueDecimal": round(self.confidence, 2)},
                {"url": SUGGESTION_EVIDENCE_EXTENSION, "valueString": "; ".join(self.evidence)[:1000]},
            ],
        }


def mend_digits(text: str) -> str:
    """OCR's letters-for-digits inside number-like runs (``O4/l7/1958`` -> ``04/17/1958``)."""
    return re.sub(r"[0-9OoDlI|SB][0-9OoDlI|SB/\-.]{3,}[0-9OoDlI|SB]", lambda m: m.group(0).translate(OCR_DIGITS), text)


def dates_in(text: str) -> dict[str, str]:
    """ISO dates found in ``text`` -> the words that said them (both orders of 04/05/1958 are kept)."""
    found: dict[str, str] = {}
    for source in (text, mend_digits(text)):
        for pattern, order in DATE_PATTERNS:
            for match in pattern.finditer(source):
                parts = dict(zip(order, match.groups(), strict=True))
                month = MONTHS[parts["b"].lower().rstrip(".")] if "b" in parts else int(parts["m"])
                readings = [(int(parts["y"]), month, int(parts["d"]))]
                if "m" in parts and order[0] == "m":
                    readings.append((int(parts["y"]), int(parts["d"]), int(parts["m"])))  # D/M/Y
                for year, month_number, day in readings:
                    try:
                        found.setdefault(date(year, month_number, day).isoformat(), match.group(0))
                    except ValueError:
                        continue
    return found


def identifier_words(text: str) -> set[str]:
    words = {w for w in IDENTIFIER_WORD.findall(text) if any(c.isdigit() for c in w)}
    words |= {w.translate(OCR_DIGITS) for w in list(words)}
    return set(list(words)[:MAX_WORDS])


def _similar(name: str, words: list[str]) -> str | None:
    """The word of ``words`` that is ``name`` (or close enough to be a misreading of it), else None."""
    target = name.lower()
    for word in words:
        lowered = word.lower()
        if lowered == target:
            return word
        close = len(target) >= 4 and abs(len(lowered) - len(target)) <= 2
        if close and SequenceMatcher(None, lowered, target).ratio() >= NAME_LIKENESS:
            return word
    return None


def _display(patient: dict[str, Any]) -> str:
    name = (patient.get("name") or [{}])[0]
    given = " ".join(name.get("given", []))
    return " ".join(p for p in (given, name.get("family")) if p) or f"Patient/{patient['id']}"


def score(patient: dict[str, Any], pages: list[dict[str, Any]]) -> Suggestion | None:
    """How strongly the text points at ``patient``, with the evidence; None when it does not enough."""
    points, evidence = 0.0, []
    has_identifier = has_birth = has_family = has_given = False
    birth = patient.get("birthDate")
    for page in pages:
        text, number = str(page.get("text") or ""), page.get("page")
        words = WORD.findall(text)
        mended = mend_digits(text)
        for identifier in patient.get("identifier") or []:
            value = identifier.get("value")
            if has_identifier or not value or len(value) < 4:
                continue
            if re.search(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])", text + "\n" + mended):
                has_identifier = True
                evidence.append(f"page {number}: identifier {value!r}")
        if birth and not has_birth and birth in (found := dates_in(text)):
            has_birth = True
            evidence.append(f"page {number}: birth date {found[birth]!r}")
        for name in patient.get("name") or []:
            family = name.get("family")
            if family and not has_family and (word := _similar(family, words)):
                has_family = True
                evidence.append(f"page {number}: family name {word!r}")
            for given in name.get("given", []):
                if not has_given and (word := _similar(given, words)):
                    has_given = True
                    evidence.append(f"page {number}: given name {word!r}")
    points = 0.6 * has_identifier + 0.3 * has_birth + 0.25 * has_family + 0.15 * has_given
    if not (has_identifier or (has_birth and has_family)):
        return None
    return Suggestion(f"Patient/{patient['id']}", _display(patient), min(0.99, points), evidence)


async def patient_suggestions(database: Any, pages: list[dict[str, Any]]) -> list[Suggestion]:
    """The patients the text points at, best first (at most SUGGESTIONS)."""
    text = "\n".join(str(p.get("text") or "") for p in pages)
    births = list(dates_in(text))
    identifiers = list(identifier_words(text))
    clauses: list[dict[str, Any]] = []
    if births:
        clauses.append({"birthDate": {"$in": births}})
    if identifiers:
        clauses.append({"identifier.value": {"$in": identifiers}})
    if not clauses:
        return []
    query = {"$or": clauses, "_fhirfax.deleted": False}
    candidates = await database["Patient"].find(query, {"_fhirfax": 0}).limit(MAX_CANDIDATES).to_list(None)
    scored = [s for s in (score(p, pages) for p in candidates) if s is not None]
    scored.sort(key=lambda s: (-s.confidence, s.reference))
    return scored[:SUGGESTIONS]


async def sender_suggestions(database: Any, caller: str | None) -> list[Suggestion]:
    """The resources whose fax telecom is the caller's number."""
    if caller is None:
        return []
    found = []
    query = {"telecom": {"$elemMatch": {"system": "fax", "value": caller}}, "_fhirfax.deleted": False}
    for resource_type in SENDER_TYPES:
        async for resource in database[resource_type].find(query, {"_id": 1, "name": 1}).limit(5):
            name = resource.get("name")
            if isinstance(name, list):  # a Practitioner's HumanName
                display = _display({"name": name, "id": resource["_id"]})
            else:
                display = str(name or f"{resource_type}/{resource['_id']}")
            evidence = [f"its fax number {caller} is the caller's"]
            found.append(Suggestion(f"{resource_type}/{resource['_id']}", display, 0.9, evidence, SUGGESTED_SENDER))
    return found[:SUGGESTIONS]


def filed_inputs(inputs: list[dict[str, Any]], patient: str) -> list[dict[str, Any]]:
    """A filed Task's inputs: every suggested patient but the one filed to is dropped (they name other people)."""
    return [
        item
        for item in inputs
        if not is_suggested_patient(item) or (item.get("valueReference") or {}).get("reference") == patient
    ]


def is_suggested_patient(item: dict[str, Any]) -> bool:
    return any(c.get("code") == SUGGESTED_PATIENT for c in (item.get("type") or {}).get("coding", []))
