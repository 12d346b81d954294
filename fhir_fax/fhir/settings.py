"""What the FHIR layer needs to know of the configuration, and nothing more.

The FHIR layer imports nothing of the product (settings, access control, fax, Z3); the runtime builds
this from the product-wide ``Settings`` (``fhir_fax.runtime.fhir_settings``). Keeping it small keeps
the layer reusable and free of import cycles through configuration.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FHIRSettings:
    fhir_path: str = "/fhir"
    base_url: str | None = None  # public base URL for links; None: taken from the request
    max_body_bytes: int = 1_000_000
    search_default_count: int = 20
    search_max_count: int = 500
    search_snapshot_max: int = 10_000
    search_snapshot_seconds: int = 1800
    software_name: str = "fhir-fax"
    software_version: str = "0"

    def public_base(self, request_base: str) -> str:
        """The base URL links are built from: the configured one, else the request's own."""
        return (self.base_url or request_base).rstrip("/")
