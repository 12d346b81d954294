"""Cover sheets and packets: time to draw a cover (fpdf2, in the server), to render it to the fax line, and to
join renderings into one packet TIFF.

    python benchmarks/cover_sheet.py [--rounds 50] [--pages 50]

Not a test; prints JSON. The cover is drawn with the longest note allowed (500 characters) and long names.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from fhir_fax.fax.cover import CoverSheet, cover_pdf
from fhir_fax.fax.render import join_tiffs, render_fax

FIXTURE = Path(__file__).resolve().parent.parent / "fhir_fax" / "data" / "fixtures" / "referral-letter.pdf"


def timed(work: Callable[[], object], rounds: int) -> dict[str, float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--pages", type=int, default=50, help="pages of the rendering joined after the cover")
    args = parser.parse_args()
    sheet = CoverSheet(
        sender_name="Riverside Family Medicine - Referrals Desk " * 5,
        sender_fax="+12223334444",
        recipient_fax="+16175550143",
        sent="2026-11-30T09:30:00.000Z",
        pages=args.pages + 1,
        notice="CONFIDENTIALITY NOTICE " * 40,
        recipient_name="Dr. Amelia Chen",
        sender_phone="+12223334440",
        note="Referral for review. " * 24,
    )
    cover_pdf(sheet)  # first call imports fpdf2
    pdf = cover_pdf(sheet)
    cover_tiff = render_fax(pdf, "fine")
    letter = render_fax(FIXTURE.read_bytes(), "fine")
    import io

    from PIL import Image

    with Image.open(io.BytesIO(letter)) as image:
        letter_pages = getattr(image, "n_frames", 1)
    parts = [cover_tiff] + [letter] * max(1, args.pages // letter_pages)
    print(
        json.dumps(
            {
                "machine": platform.machine(),
                "python": platform.python_version(),
                "draw_cover_pdf": timed(lambda: cover_pdf(sheet), args.rounds),
                "render_cover_fine": timed(lambda: render_fax(pdf, "fine"), max(5, args.rounds // 5)),
                f"join_{1 + len(parts[1:]) * letter_pages}_pages_fine": timed(lambda: join_tiffs(parts), 5),
                "cover_pdf_bytes": len(pdf),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
