"""The cover sheet: one PDF page made from the fax's own FHIR data, the sender's note and the project's notice.

What the sheet says is frozen at send (``CoverSheet``, stored on the job), so the worker, the preview and a
later re-render all draw the same page. It names no patient unless the project allows it
(``FHIR_FAX_COVER_PATIENT_NAME``).

Why it is drawn in the server process and not in the document sandbox: the sandbox exists for documents we did
not make (a PDF can be anything). Here we write the PDF ourselves with fpdf2 (pure Python, no parser of
outside bytes) from a fixed template, and the only outside inputs are short strings: the note (at most 500
characters, refused above that), names and numbers cut to their box. The text is cleaned before it is drawn
(control, format and bidi-override characters dropped, characters the core font cannot show replaced), and each
box has a fixed height with a line budget, so whatever the note says the sheet is one page. The work is
bounded (one page, a few hundred characters) and runs off the event loop (``cover_pdf_async``). The PDF is then
rendered to the fax line by the sandbox like any document.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from . import cover_template as T

MAX_NOTE = 500
MAX_FIELD = 200  # characters kept of a name or number before it is measured and cut to its box
ENCODING = "cp1252"  # what the core fonts can show
SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")


@dataclass(frozen=True)
class CoverSheet:
    """Everything the cover shows, frozen when the fax is accepted (stored on the job as a plain dict)."""

    sender_name: str
    sender_fax: str
    recipient_fax: str
    sent: str  # the instant the fax was accepted (FHIR instant, UTC)
    pages: int  # the whole fax, this cover included
    notice: str
    recipient_name: str | None = None
    sender_phone: str | None = None
    note: str | None = None
    patient: str | None = None

    def document(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, stored: dict[str, Any]) -> CoverSheet:
        def text(name: str) -> str | None:
            value = stored.get(name)
            return None if value is None else str(value)

        return cls(
            sender_name=str(stored.get("sender_name") or ""),
            sender_fax=str(stored.get("sender_fax") or ""),
            recipient_fax=str(stored.get("recipient_fax") or ""),
            sent=str(stored.get("sent") or ""),
            pages=int(stored.get("pages") or 0),
            notice=str(stored.get("notice") or ""),
            recipient_name=text("recipient_name"),
            sender_phone=text("sender_phone"),
            note=text("note"),
            patient=text("patient"),
        )

    @property
    def sent_display(self) -> str:
        try:
            moment = datetime.fromisoformat(self.sent.replace("Z", "+00:00"))
        except ValueError:
            return self.sent
        return moment.strftime("%Y-%m-%d %H:%M UTC")

    @property
    def pages_display(self) -> str:
        return f"{self.pages} (including this cover)"


def clean(text: str | None, limit: int = MAX_FIELD, *, lines: bool = False) -> str:
    """``text`` as it may be drawn: no control, format or bidi characters, only what the font shows, bounded.

    Bidi overrides and isolates (U+202A-U+202E, U+2066-U+2069) are format characters: dropped, so a note cannot
    reorder what is printed around it. Markup is just text here (nothing interprets it). ``lines``: keep line
    breaks (the note), else every break becomes a space (names).
    """
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text[: limit * 2])
    kept: list[str] = []
    for char in text:
        if char in "\r\n":
            kept.append("\n" if lines else " ")
        elif char == "\t":
            kept.append(" ")
        elif unicodedata.category(char)[0] != "C" and unicodedata.category(char) not in ("Zl", "Zp"):
            kept.append(char)
    joined = "".join(kept).replace("\n\n\n", "\n\n")
    joined = "\n".join(SPACES.sub(" ", line).strip() for line in joined.split("\n")).strip()
    drawable = joined.encode(ENCODING, "replace").decode(ENCODING)
    return drawable[:limit]


def display_name(resource: dict[str, Any] | None) -> str | None:
    """A resource's name for people: ``name`` (string or HumanName), else None."""
    if not resource:
        return None
    name = resource.get("name")
    if isinstance(name, str):
        return name
    if isinstance(name, list) and name and isinstance(name[0], dict):
        human = name[0]
        if isinstance(human.get("text"), str):
            return str(human["text"])
        parts = [*human.get("prefix", []), *human.get("given", []), human.get("family"), *human.get("suffix", [])]
        joined = " ".join(p for p in parts if isinstance(p, str))
        return joined or None
    practitioner = resource.get("practitioner")
    if isinstance(practitioner, dict) and isinstance(practitioner.get("display"), str):
        return str(practitioner["display"])
    return None


def first_phone(resource: dict[str, Any] | None) -> str | None:
    for telecom in (resource or {}).get("telecom", []):
        if isinstance(telecom, dict) and telecom.get("system") == "phone" and isinstance(telecom.get("value"), str):
            return str(telecom["value"])
    return None


def cover_pdf(sheet: CoverSheet) -> bytes:
    """The cover as a one-page PDF (US letter), drawn from ``cover_template``."""
    from fpdf import FPDF  # imported when a cover is drawn: servers that never draw one do not load it

    pdf = FPDF(unit="pt", format=(T.PAGE_WIDTH, T.PAGE_HEIGHT))
    pdf.set_auto_page_break(False)  # nothing may start a second page; every box is cut to fit instead
    pdf.set_margins(T.MARGIN, T.MARGIN, T.MARGIN)
    pdf.set_creator("fhir-fax")
    pdf.add_page()
    width = T.PAGE_WIDTH - 2 * T.MARGIN

    pdf.set_font(T.FONT, "B", T.TITLE_SIZE)
    pdf.set_xy(T.MARGIN, T.MARGIN)
    pdf.cell(width, T.TITLE_SIZE + 4, T.TITLE)
    pdf.set_font(T.FONT, "", T.SUBTITLE_SIZE)
    pdf.set_xy(T.MARGIN, T.MARGIN + T.TITLE_SIZE + 6)
    pdf.cell(width, T.SUBTITLE_SIZE + 4, T.SUBTITLE)
    y = T.MARGIN + T.TITLE_SIZE + T.SUBTITLE_SIZE + 22
    pdf.line(T.MARGIN, y, T.MARGIN + width, y)
    y += 10

    for label, name in T.ROWS:
        value = getattr(sheet, name)
        if value is None or value == "":
            continue
        pdf.set_xy(T.MARGIN, y)
        pdf.set_font(T.FONT, "B", T.ROW_SIZE)
        pdf.cell(T.LABEL_WIDTH, T.ROW_HEIGHT, label)
        pdf.set_font(T.FONT, "", T.ROW_SIZE)
        pdf.cell(width - T.LABEL_WIDTH, T.ROW_HEIGHT, fit_line(pdf, clean(str(value)), width - T.LABEL_WIDTH))
        y += T.ROW_HEIGHT
    y += 8
    pdf.line(T.MARGIN, y, T.MARGIN + width, y)
    y += 12

    note = clean(sheet.note, MAX_NOTE, lines=True)
    if note:
        pdf.set_xy(T.MARGIN, y)
        pdf.set_font(T.FONT, "B", T.ROW_SIZE)
        pdf.cell(width, T.ROW_HEIGHT, T.NOTE_LABEL)
        y += T.ROW_HEIGHT
        pdf.set_font(T.FONT, "", T.NOTE_SIZE)
        y = draw_lines(pdf, wrap(pdf, note, width, T.NOTE_LINES), y, T.NOTE_LINE)

    notice = clean(sheet.notice, 4000, lines=True)
    if notice:
        pdf.set_font(T.FONT, "", T.NOTICE_SIZE)
        lines = wrap(pdf, notice, width, T.NOTICE_LINES)
        top = T.PAGE_HEIGHT - T.MARGIN - len(lines) * T.NOTICE_LINE
        pdf.line(T.MARGIN, top - 6, T.MARGIN + width, top - 6)
        draw_lines(pdf, lines, top, T.NOTICE_LINE)
    return bytes(pdf.output())


async def cover_pdf_async(sheet: CoverSheet) -> bytes:
    """``cover_pdf`` off the event loop."""
    return await asyncio.to_thread(cover_pdf, sheet)


def fit_line(pdf: Any, text: str, width: float) -> str:
    """``text`` cut (with an ellipsis) to one line of ``width`` in the current font."""
    if pdf.get_string_width(text) <= width:
        return text
    while text and pdf.get_string_width(text + T.ELLIPSIS) > width:
        text = text[:-1]
    return text.rstrip() + T.ELLIPSIS


def wrap(pdf: Any, text: str, width: float, budget: int) -> list[str]:
    """``text`` wrapped to ``width`` (long words broken), at most ``budget`` lines, the last cut with an ellipsis."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        if not paragraph:
            lines.append("")
            continue
        lines.extend(pdf.multi_cell(width, 10, paragraph, dry_run=True, output="LINES"))
        if len(lines) > budget:
            break
    if len(lines) > budget:
        lines = lines[:budget]
        lines[-1] = fit_line(pdf, lines[-1] + T.ELLIPSIS, width)
    return lines


def draw_lines(pdf: Any, lines: list[str], y: float, height: float) -> float:
    for line in lines:
        pdf.set_xy(T.MARGIN, y)
        pdf.cell(T.PAGE_WIDTH - 2 * T.MARGIN, height, line)
        y += height
    return y
