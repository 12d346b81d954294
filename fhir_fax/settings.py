"""Every knob of fhir-fax in one place, read from ``FHIR_FAX_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration shared by the plugin, the standalone server and the command line."""

    model_config = SettingsConfigDict(env_prefix="FHIR_FAX_", env_file=".env", extra="ignore")

    mongodb_uri: str | None = Field(
        default=None,
        description="MongoDB connection string. Unset: start the embedded database under DATA_DIR.",
    )
    database_name: str = Field(default="fhir_fax", description="Database that holds every collection.")
    data_dir: Path = Field(
        default=Path("fhir-fax-data"), description="Embedded database files and logs live here."
    )
    base_url: str | None = Field(
        default=None,
        description="Public base URL used in links (Location, Bundle links). Unset: taken from the request.",
    )
    host: str = "127.0.0.1"
    port: int = 8080
    fhir_path: str = Field(default="/fhir", description="Where the FHIR REST API is mounted.")
    load_fixtures: bool = Field(default=False, description="Load fixtures/ into the datastore on start.")
    max_body_bytes: int = Field(default=2_000_000, description="Largest JSON request body accepted (413).")
    search_default_count: int = Field(default=20, ge=1)
    search_max_count: int = Field(default=500, ge=1)

    def public_base(self, request_base: str) -> str:
        """The base URL links are built from: the configured one, else the request's own."""
        return (self.base_url or request_base).rstrip("/")
