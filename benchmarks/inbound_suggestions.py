"""Precision of the patient suggestions on received faxes, on synthetic letters about known patients.

    python benchmarks/inbound_suggestions.py

The letters (``tests/inbound_letters.py``: for 6 patients a clean PDF with a text layer, a noisy scan and a
fax-line TIFF, the MRN on half of them; one letter about a stranger; 3 distractor patients sharing a name or a
birth date) go through what a received fax goes through: the document checks and TIFF-to-PDF in the sandbox,
the text layer or Tesseract, then the suggestion query against an embedded database holding the patients.
Reported: precision (the first suggestion is the letter's patient, among letters with a suggestion), recall
(letters about a known patient that got their patient first) and the reading time per letter. Not a test.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from inbound_letters import DISTRACTORS, PATIENTS, letters, patient_resource  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from fhir_fax.embedded import EmbeddedDatabase  # noqa: E402
from fhir_fax.fax.inbound_document import accept, read_texts  # noqa: E402
from fhir_fax.fax.suggestions import patient_suggestions  # noqa: E402
from fhir_fax.fhir.store import ResourceStore  # noqa: E402


async def measure(uri: str) -> dict[str, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    database = client["suggestions_bench"]
    store = ResourceStore(database)
    for person in PATIENTS + DISTRACTORS:
        await store.put_if_changed(patient_resource(person))
    rows = []
    for letter in letters():
        started = time.perf_counter()
        pdf = (await accept(letter.document, 10)).pdf
        pages = await read_texts(pdf, True, 60)
        found = await patient_suggestions(database, pages)
        seconds = time.perf_counter() - started
        first = found[0].reference if found else None
        rows.append(
            {
                "letter": letter.name,
                "read_by": pages[0]["source"] if pages else None,
                "expected": f"Patient/{letter.person.key}" if letter.person.key else None,
                "first": first,
                "confidence": found[0].confidence if found else None,
                "seconds": round(seconds, 2),
            }
        )
        print(f"{letter.name:22} {rows[-1]['read_by']:5} {first or '-':24} {seconds:5.1f} s", flush=True)
    await client.drop_database("suggestions_bench")
    await client.close()
    proposed = [r for r in rows if r["first"]]
    right = [r for r in proposed if r["first"] == r["expected"]]
    known = [r for r in rows if r["expected"]]
    return {
        "letters": len(rows),
        "with_suggestion": len(proposed),
        "first_right": len(right),
        "precision": round(len(right) / len(proposed), 3) if proposed else None,
        "recall": round(len(right) / len(known), 3) if known else None,
        "seconds_per_letter_median": round(statistics.median(r["seconds"] for r in rows), 2),
        "seconds_per_ocr_letter_median": round(
            statistics.median(r["seconds"] for r in rows if r["read_by"] == "ocr"), 2
        ),
        "rows": rows,
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = EmbeddedDatabase(Path(directory))
        uri = server.start()
        try:
            result = asyncio.run(measure(uri))
        finally:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inbound_suggestions.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"precision {result['precision']} ({result['first_right']}/{result['with_suggestion']}), "
        f"recall {result['recall']}, median {result['seconds_per_ocr_letter_median']} s per OCR letter"
    )


if __name__ == "__main__":
    main()
