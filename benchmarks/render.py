"""Fax rendering speed and memory: pages rendered per second per quality, peak memory for a 50-page PDF.

    python benchmarks/render.py [--pages 50]

Each quality runs in a fresh process so that its peak memory (VmHWM) is its own. Not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def letter_pdf(pages: int) -> bytes:
    """A text-heavy letter-size PDF with ``pages`` pages."""
    import pypdfium2

    document = pypdfium2.PdfDocument.new()
    out = io.BytesIO()
    source = (
        Path(__file__).resolve().parent.parent / "fhir_fax" / "data" / "fixtures" / "referral-letter.pdf"
    ).read_bytes()
    template = pypdfium2.PdfDocument(source)
    for index in range(pages):
        document.import_pages(template, [index % len(template)])
    document.save(out)
    return out.getvalue()


def peak_mb() -> float:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(quality: str, pages: int) -> None:
    from fhir_fax.fax.render import render_fax

    data = letter_pdf(pages)
    baseline = peak_mb()
    started = time.perf_counter()
    tiff = render_fax(data, quality)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "quality": quality,
        "pages": pages,
        "seconds": round(seconds, 2),
        "pages_per_second": round(pages / seconds, 1),
        "peak_mb_over_baseline": round(peak_mb() - baseline, 1),
        "tiff_kb": round(len(tiff) / 1024),
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.pages)
        return
    rows = []
    for quality in ("standard", "fine", "superfine"):
        run = subprocess.run(
            [sys.executable, __file__, "--child", quality, "--pages", str(args.pages)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "render.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"Machine: {machine}; a {args.pages}-page letter-size PDF\n")
    print("| quality | pages/s | seconds | peak memory over baseline (MB) | TIFF size (KB) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        cells = [row["quality"], row["pages_per_second"], row["seconds"], row["peak_mb_over_baseline"], row["tiff_kb"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
