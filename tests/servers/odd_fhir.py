"""A FHIR server that misbehaves in documented ways, for testing the HTTP reference resolver.

Run as ``python tests/servers/odd_fhir.py PORT``. Each path prefix picks a behaviour:
``/slow`` answers after 3 s, ``/html`` answers a web page, ``/wrong`` answers another resource,
``/broken`` answers 500, ``/guarded`` wants ``Authorization: Bearer good`` or one registered with
``POST /guarded/allow`` (and records what it got).
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

app = FastAPI()
seen_authorization: list[str | None] = []
allowed_authorization: set[str] = {"Bearer good"}


def resource(resource_type: str, resource_id: str) -> dict:
    """Whatever was asked for, with the fax number the tests onboard."""
    return {"resourceType": resource_type, "id": resource_id, "telecom": [{"system": "fax", "value": "+12223334444"}]}


@app.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@app.get("/slow/fhir/{resource_type}/{resource_id}")
async def slow(resource_type: str, resource_id: str) -> dict:
    await asyncio.sleep(3)
    return resource(resource_type, resource_id)


@app.get("/html/fhir/{resource_type}/{resource_id}")
async def html(resource_type: str, resource_id: str) -> Response:
    return HTMLResponse("<html><body>Welcome to our portal</body></html>")


@app.get("/wrong/fhir/{resource_type}/{resource_id}")
async def wrong(resource_type: str, resource_id: str) -> Response:
    return JSONResponse({"resourceType": "Patient", "id": resource_id}, media_type="application/fhir+json")


@app.get("/broken/fhir/{resource_type}/{resource_id}")
async def broken(resource_type: str, resource_id: str) -> Response:
    return JSONResponse({"error": "database on fire"}, status_code=500)


@app.get("/guarded/fhir/{resource_type}/{resource_id}")
async def guarded(request: Request, resource_type: str, resource_id: str) -> Response:
    authorization = request.headers.get("authorization")
    seen_authorization.append(authorization)
    if authorization not in allowed_authorization:
        return JSONResponse({"resourceType": "OperationOutcome", "issue": []}, status_code=401)
    return JSONResponse(resource(resource_type, resource_id), media_type="application/fhir+json")


@app.post("/guarded/allow")
async def allow(request: Request) -> dict[str, int]:
    allowed_authorization.add((await request.json())["authorization"])
    return {"allowed": len(allowed_authorization)}


@app.get("/guarded/seen")
async def seen() -> list[str | None]:
    return seen_authorization


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
