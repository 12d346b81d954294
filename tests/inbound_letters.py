"""Synthetic received faxes about known patients: clean PDFs with a text layer, scans and fax-line TIFFs.

Used by the suggestion tests and by ``benchmarks/inbound_suggestions.py`` (the precision figure). Everything is
seeded: the same letter is the same bytes every run.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cache

from PIL import Image, ImageDraw, ImageFilter, ImageFont

DPI = 200
PAGE = (int(8.5 * DPI), 11 * DPI)


@dataclass(frozen=True)
class Person:
    key: str  # the Patient id, or "" for someone the practice does not know
    given: str
    family: str
    birth: date
    mrn: str


def birth_text(birth: date, style: int) -> str:
    return [
        birth.strftime("%m/%d/%Y"),
        birth.isoformat(),
        birth.strftime("%B %d, %Y").replace(" 0", " "),
        birth.strftime("%d %b %Y"),
    ][style % 4]


def letter_lines(person: Person, style: int, with_mrn: bool) -> list[str]:
    reference = f"RE: {person.given} {person.family}    DOB: {birth_text(person.birth, style)}"
    lines = [
        "Harbor Cardiology Associates",
        "55 Harbor Street, Boston MA 02110      Fax +1 617 555 0141",
        "",
        "Date: November 3, 2026",
        reference,
    ]
    if with_mrn:
        lines.append(f"MRN: {person.mrn}")
    lines += [
        "",
        "Dear colleague,",
        f"Thank you for seeing {person.given} {person.family} in clinic. The echocardiogram",
        "showed preserved ejection fraction and mild mitral regurgitation. Please continue",
        "the current medication and repeat the lipid panel in three months.",
        "",
        "Sincerely,",
        "Dr. Amelia Chen",
    ]
    return lines


def text_pdf(lines: list[str]) -> bytes:
    """A one-page US Letter PDF with a real text layer (Helvetica), written from plain PDF objects."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    content = "BT /F1 12 Tf 72 720 Td 16 TL " + " ".join(f"({escape(line)}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        "/Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
    ]
    output = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(output))
        output += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    table = len(output)
    output += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    output += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    output += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{table}\n%%EOF\n".encode()
    return bytes(output)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def page_image(lines: list[str]) -> Image.Image:
    page = Image.new("L", PAGE, 255)
    draw = ImageDraw.Draw(page)
    font = _font(int(DPI * 0.16))
    y = DPI
    for line in lines:
        draw.text((DPI, y), line, fill=0, font=font)
        y += int(DPI * 0.26)
    return page


def scanned(lines: list[str], seed: int, noise: int = 1) -> Image.Image:
    """The page as a tired scanner sees it: a slight skew, grey speckle and a little blur (``noise`` times more)."""
    rng = random.Random(seed)
    page = page_image(lines).rotate(rng.uniform(-1.2, 1.2) * noise, expand=False, fillcolor=255)
    pixels = page.load()
    assert pixels is not None
    width, height = page.size
    for _ in range(width * height * noise // 200):
        pixels[rng.randrange(width), rng.randrange(height)] = rng.choice((0, 90, 160))
    return page.filter(ImageFilter.GaussianBlur(0.7 * noise))


def scanned_pdf(lines: list[str], seed: int) -> bytes:
    output = io.BytesIO()
    scanned(lines, seed).convert("L").save(output, format="PDF", resolution=DPI)
    return output.getvalue()


def fax_tiff_of(lines: list[str], seed: int, lines_per_inch: int = 196, noise: int = 1) -> bytes:
    """As a fax line delivers it: 204 x 196 dpi (fine) or 204 x 98 (standard), 1 bit, Group 4."""
    page = scanned(lines, seed, noise)
    width = 1728
    height = round(page.height * width / page.width * lines_per_inch / 204)
    bilevel = page.resize((width, height)).point(lambda v: 255 if v > 150 else 0).convert("1")
    output = io.BytesIO()
    bilevel.save(output, format="TIFF", compression="group4", dpi=(204, lines_per_inch))
    return output.getvalue()


PATIENTS = [
    Person("p-okafor", "Chidi", "Okafor", date(1971, 2, 9), "HC-204511"),
    Person("p-nguyen", "Linh", "Nguyen", date(1984, 11, 23), "HC-377120"),
    Person("p-schmidt", "Hannelore", "Schmidt", date(1949, 6, 30), "HC-118402"),
    Person("p-alvarez", "Rosa", "Alvarez", date(1990, 1, 15), "HC-502966"),
    Person("p-kowalski", "Tomasz", "Kowalski", date(1963, 8, 4), "HC-655013"),
    Person("p-haddad", "Yasmin", "Haddad", date(2001, 12, 1), "HC-740288"),
]
# Distractors: the same name born another day, and another name born the same day.
DISTRACTORS = [
    Person("p-okafor-2", "Chidi", "Okafor", date(1975, 2, 9), "HC-900001"),
    Person("p-other-1984", "Linda", "Newton", date(1984, 11, 23), "HC-900002"),
    Person("p-schmitt", "Hannes", "Schmitt", date(1949, 6, 30), "HC-900003"),
]
STRANGER = Person("", "Jonas", "Whitfield", date(1955, 3, 3), "XX-000000")


def patient_resource(person: Person) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "id": person.key,
        "identifier": [{"system": "https://harbor.example/mrn", "value": person.mrn}],
        "name": [{"family": person.family, "given": [person.given]}],
        "birthDate": person.birth.isoformat(),
    }


@dataclass(frozen=True)
class Letter:
    name: str
    person: Person
    document: bytes


def _specs() -> list[tuple[str, Person, Callable[[], bytes]]]:
    """What the set holds, each letter built only when asked for."""
    specs: list[tuple[str, Person, Callable[[], bytes]]] = []
    for index, person in enumerate(PATIENTS):
        lines = letter_lines(person, index, with_mrn=index % 2 == 0)
        fine = letter_lines(person, index + 1, False)
        worst = letter_lines(person, index + 2, index % 3 == 0)
        specs += [
            (f"{person.key}-text", person, lambda lines=lines: text_pdf(lines)),
            (f"{person.key}-scan", person, lambda lines=lines, seed=index: scanned_pdf(lines, seed)),
            (f"{person.key}-fax", person, lambda lines=fine, seed=index: fax_tiff_of(lines, seed)),
            (
                f"{person.key}-standard-noisy",
                person,
                lambda lines=worst, seed=index + 50: fax_tiff_of(lines, seed, lines_per_inch=98, noise=2),
            ),
        ]
    specs.append(("stranger-scan", STRANGER, lambda: scanned_pdf(letter_lines(STRANGER, 2, True), seed=99)))
    return specs


@cache
def letter(name: str) -> Letter:
    """One letter of the set, by name (``p-okafor-scan``)."""
    for known, person, build in _specs():
        if known == name:
            return Letter(name, person, build())
    raise KeyError(name)


def letters() -> list[Letter]:
    """The synthetic set: for each patient a clean PDF, a scan, a fine fax TIFF and a noisy standard-resolution
    fax (the MRN on some), then a letter about a stranger."""
    return [letter(name) for name, _, _ in _specs()]
