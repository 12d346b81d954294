"""The standalone server: a small FastAPI app with fhir-fax installed."""

from __future__ import annotations

from fastapi import FastAPI

from . import __version__
from .module import FaxModule
from .settings import Settings


def create_app(settings: Settings | None = None, *, database: object = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="fhir-fax",
        version=__version__,
        description="Send faxes from a FHIR server; each fax is recorded as a FHIR Communication.",
    )
    module = FaxModule(settings, database=database)
    module.install(app)
    if settings.cors_origins:  # browser SMART apps on other origins (a host app configures its own CORS)
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["authorization", "content-type", "accept", "prefer", "if-match", "if-none-match"],
            expose_headers=["location", "content-location", "etag", "last-modified"],
            allow_credentials=False,
        )
    app.state.fax_module = module

    @app.get("/healthz", tags=["meta"], summary="Liveness check")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
