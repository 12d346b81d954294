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
    app.state.fax_module = module

    @app.get("/healthz", tags=["meta"], summary="Liveness check")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
