"""The cover sheet's template: where each field goes on a US-letter page and how much room it has.

Kept apart from the drawing code (``cover.py``) so the look of the sheet is changed here alone. Units are
points (1/72 inch); every box has a fixed height and a line budget, so no text can push another off the page.
"""

from __future__ import annotations

from typing import Final

PAGE_WIDTH: Final = 612.0  # US letter: its width is what a fax line carries across
PAGE_HEIGHT: Final = 792.0
MARGIN: Final = 54.0
FONT: Final = "Helvetica"  # a core PDF font: nothing embedded, nothing loaded from disk

TITLE: Final = "FAX"
TITLE_SIZE: Final = 34.0
SUBTITLE: Final = "Cover sheet"
SUBTITLE_SIZE: Final = 12.0

LABEL_WIDTH: Final = 96.0  # the column of labels ("To", "Fax", ...)
ROW_HEIGHT: Final = 20.0
ROW_SIZE: Final = 12.0

# (label, field) in order; a field that is None is left out (e.g. no phone number, no patient allowed).
ROWS: Final = (
    ("To", "recipient_name"),
    ("Fax", "recipient_fax"),
    ("From", "sender_name"),
    ("Fax", "sender_fax"),
    ("Phone", "sender_phone"),
    ("Date", "sent_display"),
    ("Pages", "pages_display"),
    ("Patient", "patient"),
)

NOTE_LABEL: Final = "Note"
NOTE_SIZE: Final = 11.0
NOTE_LINE: Final = 14.0
NOTE_LINES: Final = 16  # the box's height in lines; a longer note is cut with an ellipsis

NOTICE_SIZE: Final = 8.5
NOTICE_LINE: Final = 10.5
NOTICE_LINES: Final = 10  # anchored to the bottom margin

ELLIPSIS: Final = "..."
