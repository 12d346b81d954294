"""Every knob of fhir-fax in one place, read from ``FHIR_FAX_*`` environment variables."""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .auth.issuers import ExternalIssuer


class Settings(BaseSettings):
    """Configuration shared by the plugin, the standalone server and the command line."""

    model_config = SettingsConfigDict(env_prefix="FHIR_FAX_", env_file=".env", extra="ignore")

    mongodb_uri: str | None = Field(
        default=None,
        description="MongoDB connection string. Unset: start the embedded database under DATA_DIR.",
    )
    database_name: str = Field(default="fhir_fax", description="Database that holds every collection.")
    data_dir: Path = Field(default=Path("fhir-fax-data"), description="Embedded database files and logs live here.")
    base_url: str | None = Field(
        default=None,
        description="Public base URL used in links (Location, Bundle links). Unset: taken from the request.",
    )
    log_format: str = Field(default="text", pattern="^(text|json)$", description="text, or json (one object per line).")
    host: str = "127.0.0.1"
    port: int = 8080
    fhir_path: str = Field(default="/fhir", description="Where the FHIR REST API is mounted.")
    load_fixtures: bool = Field(default=False, description="Load the bundled demo fixtures on start.")
    max_body_bytes: int = Field(
        default=1_000_000, ge=1, description="Largest JSON or form request body accepted (413), read as a stream."
    )
    token_max_body_bytes: int = Field(
        default=65_536, ge=1, description="Largest body of POST /oauth/token (413); it is read before any check."
    )
    webhook_max_body_bytes: int = Field(
        default=262_144, ge=1, description="Largest carrier webhook body (413); it is read before the signature check."
    )
    search_default_count: int = Field(default=20, ge=1)
    search_max_count: int = Field(default=500, ge=1)
    search_snapshot_max: int = Field(
        default=10_000, ge=1, description="Most matches a search sorted on a changing value (e.g. status) can page."
    )
    search_snapshot_seconds: int = Field(
        default=1800, ge=60, description="How long the pages of such a search stay available after its first page."
    )

    # Fax API
    fax_api_path: str = Field(default="/fax/v1", description="Where the SDK-compatible fax API is mounted.")
    project_api_path: str = Field(default="/v1", description="Where the project API (Z3) is mounted.")
    carrier: str = Field(default="simulator", description="Fax carrier: simulator (built in) or telnyx.")
    carrier_fax_number: str | None = Field(
        default=None, description="The number your carrier assigned; registered by POST /fax/v1/onboard."
    )
    require_valid_numbers: bool = Field(
        default=False,
        description="Also demand libphonenumber's is_valid_number (assigned ranges), not only is_possible_number.",
    )
    z3_url_aliases: list[str] = Field(
        default_factory=list,
        description="Other project-API base URLs whose /z3/... URLs name this project's Z3 (JSON list).",
    )
    max_pages: int = Field(default=350, ge=1, description="Most pages one fax may have (Telnyx's limit).")
    max_page_pixels: int = Field(
        default=40_000_000,
        ge=1_000_000,
        description="Pixel budget of one page: a page bigger than this faxed at full length (or an image bigger "
        "than this decoded) is refused before it is drawn.",
    )
    document_memory_bytes: int = Field(
        default=1 << 30, ge=128 << 20, description="Address space of the process that reads and renders documents."
    )
    document_check_seconds: float = Field(
        default=30.0, gt=0, description="Longest the send-time check of one document may take (422 past it)."
    )
    document_render_seconds: float = Field(
        default=300.0, gt=0, description="Longest the rendering of one document may take (the fax stops past it)."
    )
    z3_url_ttl_seconds: int = Field(default=900, ge=1, description="How long presigned Z3 URLs stay valid.")
    z3_max_object_bytes: int = Field(default=50_000_000, ge=1, description="Largest Z3 object accepted (413).")
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60, description="How long idempotency keys are kept.")

    # Delivery
    worker_enabled: bool = Field(default=True, description="Run the delivery worker inside `fhir-fax serve`.")
    worker_poll_seconds: float = Field(default=0.5, gt=0, description="How often an idle worker looks for work.")
    worker_concurrency: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Attempts one worker prepares and hands over at once (the carrier's own "
        "declared limit, if lower, wins).",
    )
    lease_seconds: float = Field(default=60.0, gt=0, description="How long a worker may hold a job unrenewed.")
    retry_max_attempts: int = Field(default=3, ge=1, description="Attempts per fax (HylaFAX: 3 tries).")
    retry_delay_seconds: float = Field(default=180.0, ge=0, description="Wait before the first retry.")
    retry_backoff: float = Field(default=2.0, ge=1, description="Each later retry waits this much longer.")
    kill_time_seconds: float = Field(default=10_800.0, gt=0, description="Give up on a fax this long after sending.")
    stuck_after_seconds: float = Field(
        default=300.0, gt=0, description="Poll the carrier for a fax with no news for this long."
    )
    simulator_speed: float = Field(default=1.0, gt=0, description="Simulator clock: 1 real time, 1000 faster.")

    # Telnyx Programmable Fax (FHIR_FAX_CARRIER=telnyx)
    telnyx_api_base: str = "https://api.telnyx.com/v2"
    telnyx_api_key: str | None = None
    telnyx_connection_id: str | None = None
    telnyx_public_key: str | None = Field(
        default=None, description="Base64 Ed25519 public key that signs Telnyx webhooks (from the Telnyx portal)."
    )
    telnyx_timeout_seconds: float = Field(default=15.0, gt=0)
    webhook_tolerance_seconds: int = Field(default=300, ge=1, description="Reject webhooks signed longer ago.")

    # Access
    bootstrap_client_id: str | None = Field(default=None, description="An admin client ensured at start-up.")
    bootstrap_client_secret: str | None = Field(default=None, description="Its secret.")
    token_lifetime_seconds: int = Field(default=900, ge=60, description="How long issued access tokens last.")
    token_failures_per_minute: int = Field(
        default=10,
        ge=1,
        description="Failed token requests allowed per client id and caller address each minute (429).",
    )
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        description=(
            "Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDRs, commas or a JSON list). "
            "Unset: nobody's; the connecting peer is the caller."
        ),
    )
    external_issuers: list[ExternalIssuer] = Field(
        default_factory=list,
        description="Authorization servers whose tokens are accepted too (JSON list: issuer, jwks_url, policies...).",
    )

    # Where sender/recipient/patient references are looked up
    reference_fhir_base: str | None = Field(
        default=None, description="Look references up on this FHIR server instead of the local datastore."
    )
    reference_fhir_token: str | None = Field(
        default=None, description="Bearer token for that server; unset: forward the caller's Authorization."
    )
    reference_timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_list(cls, value: Any) -> Any:
        """``10.0.0.0/8, 192.0.2.1`` or ``["10.0.0.0/8"]``; a host address with a prefix (10.0.0.1/8) is refused."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list):
            networks = []
            for item in value:
                try:
                    networks.append(ip_network(item) if isinstance(item, str) else item)
                except ValueError as error:
                    raise ValueError(f"{item!r} is not an IP address or network ({error})") from None
            return networks
        return value

    def public_base(self, request_base: str) -> str:
        """The base URL links are built from: the configured one, else the request's own."""
        return (self.base_url or request_base).rstrip("/")
