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
    # Fax packets: a cover sheet and several documents in one fax (fax/cover.py, fax/send.py)
    max_fax_bytes: int = Field(
        default=50_000_000, ge=1, description="Most bytes the documents of one fax may have together."
    )
    cover_page_default: bool = Field(default=False, description="Add a cover sheet when a send does not say.")
    cover_notice: str = Field(
        default=(
            "CONFIDENTIALITY NOTICE: This facsimile may contain protected health information that is privileged "
            "and confidential under federal and state law, including HIPAA. It is intended only for the recipient "
            "named above. If you are not the intended recipient, any review, disclosure, copying or distribution "
            "is prohibited. If you received this fax in error, notify the sender at the number above and destroy "
            "all copies."
        ),
        max_length=2000,
        description="The confidentiality notice printed on every cover sheet (wrapped and cut to fit).",
    )
    cover_patient_name: bool = Field(
        default=False, description="Print the patient's name on cover sheets (by default a cover names no patient)."
    )

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

    # Subscriptions (notifications about Communications)
    subscriptions_enabled: bool = Field(
        default=True, description="Match and deliver Subscription notifications inside `fhir-fax serve`."
    )
    subscription_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Hosts a Subscription endpoint may reach over plain http (commas or a JSON list; every other "
        "endpoint must be https). Default: loopback only, for development; set it empty in production.",
    )
    subscription_retry_attempts: int = Field(default=6, ge=1, description="Tries per notification before error.")
    subscription_retry_delay_seconds: float = Field(
        default=120.0, ge=0, description="Wait before the second try; each later one waits twice as long."
    )
    subscription_timeout_seconds: float = Field(default=10.0, gt=0, description="Longest one rest-hook POST may take.")
    subscription_poll_seconds: float = Field(
        default=0.5, gt=0, description="How often delivery looks for work it was not woken for."
    )

    # Telnyx Programmable Fax (FHIR_FAX_CARRIER=telnyx)
    telnyx_api_base: str = "https://api.telnyx.com/v2"
    telnyx_api_key: str | None = None
    telnyx_connection_id: str | None = None
    telnyx_public_key: str | None = Field(
        default=None, description="Base64 Ed25519 public key that signs Telnyx webhooks (from the Telnyx portal)."
    )
    telnyx_timeout_seconds: float = Field(default=15.0, gt=0)
    webhook_tolerance_seconds: int = Field(default=300, ge=1, description="Reject webhooks signed longer ago.")

    # Inbound faxes (reception)
    inbound_bucket: str = Field(
        default="fax-received",
        pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$",
        description="Z3 bucket received faxes are kept in (the hosted service: {project}-fax-received).",
    )
    inbound_max_bytes: int = Field(
        default=50_000_000, ge=1, description="Largest received document (Telnyx's limit); bigger is refused."
    )
    inbound_media_hosts: list[str] = Field(
        default_factory=lambda: ["https://s3.amazonaws.com", "https://*.s3.amazonaws.com"],
        description="Origins (scheme://host[:port], host may start with *.) inbound fax media is downloaded "
        "from (JSON list); anything else is refused, redirects are not followed.",
    )
    inbound_media_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest the download of one received fax may take."
    )
    inbound_ocr: bool = Field(default=True, description="Read scanned faxes with Tesseract to suggest patients.")
    inbound_ocr_seconds: float = Field(default=60.0, gt=0, description="Longest OCR of one received fax may take.")

    # Access
    bootstrap_client_id: str | None = Field(default=None, description="An admin client ensured at start-up.")
    bootstrap_client_secret: str | None = Field(default=None, description="Its secret.")
    bootstrap_user: str | None = Field(default=None, description="An admin user (SMART sign-in) ensured at start-up.")
    bootstrap_password: str | None = Field(default=None, description="Its password.")
    authorization_code_seconds: int = Field(
        default=60, ge=5, le=600, description="How long an authorization code may be exchanged (single use)."
    )
    refresh_token_days: int = Field(
        default=30, ge=1, description="How long an offline_access refresh token lasts (each use rotates it)."
    )
    online_refresh_hours: int = Field(
        default=8, ge=1, description="How long an online_access refresh token lasts (a working day)."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Browser origins (JSON list; ["*"] for any) whose scripts may call the API: SMART apps that '
        "run in a browser need it. Tokens travel in headers, never cookies, so no credentials are allowed.",
    )
    fax_app_enabled: bool = Field(
        default=True, description="Serve the fax app at /apps/fax/ and register it as a public SMART app."
    )
    sign_in_seconds: int = Field(
        default=600, ge=60, description="How long a sign-in and consent at /oauth/authorize may take."
    )
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

    @field_validator("subscription_allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        """``a.example, b.example`` or ``["a.example"]``; an empty string is no host (https only)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip().lower() for part in text.split(",") if part.strip()]
        return value

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
