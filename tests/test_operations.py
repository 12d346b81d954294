"""Declared operations: one OperationDefinition and a handler, registered in one line, give the route, the
CapabilityStatement entry, the stored definition and the parsing of its inputs.

The ``$echo`` operation below is declared here, in the test, as a new operation (``$resend``, ``$file``)
would be declared in its own module: nothing of the server is changed for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response

from fhir_fax.fhir.errors import InvalidRequest
from fhir_fax.fhir.http import FHIRResponse
from fhir_fax.fhir.operations import Operation, OperationCall, OperationRegistry
from fhir_fax.module import FaxModule
from fhir_fax.settings import Settings

from helpers import FHIR_JSON, login

ECHO_DEFINITION: dict[str, Any] = {
    "resourceType": "OperationDefinition",
    "id": "echo",
    "url": "urn:test:OperationDefinition:echo",
    "name": "Echo",
    "status": "active",
    "kind": "operation",
    "code": "echo",
    "resource": ["Communication"],
    "system": True,
    "type": True,
    "instance": True,
    "parameter": [
        {"name": "message", "use": "in", "min": 1, "max": "1", "type": "string", "documentation": "What to echo."},
        {"name": "times", "use": "in", "min": 0, "max": "1", "type": "integer"},
        {"name": "loud", "use": "in", "min": 0, "max": "1", "type": "boolean"},
        {"name": "tag", "use": "in", "min": 0, "max": "3", "type": "code"},
        {"name": "about", "use": "in", "min": 0, "max": "1", "type": "Reference",
         "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"]},
        {"name": "link", "use": "in", "min": 0, "max": "1", "type": "url"},
        {"name": "return", "use": "out", "min": 1, "max": "1", "type": "Parameters"},
    ],
}  # fmt: skip

calls: list[OperationCall] = []


async def echo(call: OperationCall) -> Response:
    calls.append(call)
    body = {"inputs": call.inputs, "type": call.resource_type, "id": call.resource_id}
    return FHIRResponse({"resourceType": "Parameters", "parameter": [{"name": "echo", "valueString": repr(body)}]})


ECHO = Operation(ECHO_DEFINITION, echo, access=("FHIR:Read", "FHIR:Communication"), summary="Echo the inputs")


@pytest.fixture
async def api(settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The module with ``$echo`` registered: the one line a new operation needs."""
    calls.clear()
    app = FastAPI()
    module = FaxModule(settings, database=database)
    module.fhir.operations.add(ECHO)  # <- the registration line
    module.install(app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fhir.test") as http,
    ):
        await login(http)
        yield http


def parameters(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


async def test_a_registered_operation_is_routed_at_every_level_it_declares(api: httpx.AsyncClient) -> None:
    body = parameters(
        {"name": "message", "valueString": "hello"},
        {"name": "times", "valueInteger": 3},
        {"name": "loud", "valueBoolean": False},
        {"name": "tag", "valueCode": "a"},
        {"name": "tag", "valueCode": "b"},
        {"name": "about", "valueReference": {"reference": "Patient/p1"}},
        {"name": "link", "valueUrl": "https://example.org/x"},
    )
    response = await api.post("/fhir/Communication/$echo", json=body, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert calls[0].inputs == {
        "message": "hello", "times": 3, "loud": False, "tag": ["a", "b"], "about": "Patient/p1",
        "link": "https://example.org/x",
    }  # fmt: skip
    assert (calls[0].resource_type, calls[0].resource_id) == ("Communication", None)

    response = await api.post("/fhir/Communication/c-1/$echo", json=parameters(body["parameter"][0]), headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert (calls[1].resource_id, calls[1].inputs["tag"], calls[1].inputs["times"]) == ("c-1", [], None)

    response = await api.post("/fhir/$echo", json=parameters(body["parameter"][0]), headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert (calls[2].resource_type, calls[2].resource_id) == (None, None)

    for path in ("/fhir/Communication/$echo", "/fhir/Communication/c-1/$echo"):  # offered with POST only
        refused = await api.get(path)
        assert (refused.status_code, refused.headers["allow"]) == (405, "POST"), path
    assert (await api.post("/fhir/Patient/p-1/$echo", json=parameters(), headers=FHIR_JSON)).status_code == 405
    assert len(calls) == 3


async def test_a_registered_operation_is_listed_and_stored(api: httpx.AsyncClient) -> None:
    statement = (await api.get("/fhir/metadata")).json()
    communication = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Communication")
    assert {"name": "echo", "definition": "urn:test:OperationDefinition:echo"} in communication["operation"]
    assert {"name": "send-fax", "definition": "urn:fhir-fax:OperationDefinition:send-fax"} in communication["operation"]
    assert statement["rest"][0]["operation"] == [{"name": "echo", "definition": "urn:test:OperationDefinition:echo"}]
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert "operation" not in patient
    stored = await api.get("/fhir/OperationDefinition/echo")
    assert stored.status_code == 200
    assert stored.json()["url"] == "urn:test:OperationDefinition:echo"


@pytest.mark.parametrize(
    ("items", "message", "expression"),
    [
        (
            [
                {"name": "message", "valueString": "x"},
                {"name": "colour", "valueString": "b"},
                {"name": "size", "valueInteger": 1},
            ],
            "Unknown parameters 'colour', 'size' for $echo; known: message, times, loud, tag, about, link.",
            ["colour", "size"],
        ),
        ([{"name": "times", "valueInteger": 1}], "Parameter 'message' is required: What to echo.", ["message"]),
        (
            [{"name": "message", "valueString": "x"}, {"name": "times", "valueString": "3"}],
            "Parameter 'times' must be given as valueInteger, not valueString.",
            ["times"],
        ),
        (
            [{"name": "message", "valueString": "x"}, {"name": "message", "valueString": "y"}],
            "Parameter 'message' may appear only once.",
            ["message"],
        ),
        (
            [{"name": "message", "valueString": "x"}, *[{"name": "tag", "valueCode": c} for c in "abcd"]],
            "Parameter 'tag' may appear only 3 times.",
            ["tag"],
        ),
        (
            [{"name": "message", "valueString": "x"}, {"name": "return", "valueString": "y"}],
            "Unknown parameter 'return' for $echo",
            ["return"],
        ),
    ],
)  # fmt: skip
async def test_inputs_the_definition_does_not_allow_are_refused(
    api: httpx.AsyncClient, database: Any, items: list[dict[str, Any]], message: str, expression: list[str]
) -> None:
    before = await database["Communication"].count_documents({})
    response = await api.post("/fhir/Communication/$echo", json=parameters(*items), headers=FHIR_JSON)
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["diagnostics"].startswith(message)
    assert issue["expression"] == expression
    assert calls == []  # the handler never ran
    assert await database["Communication"].count_documents({}) == before


async def test_the_caller_is_checked_before_the_body_is_read(api: httpx.AsyncClient) -> None:
    del api.headers["authorization"]
    response = await api.post("/fhir/Communication/$echo", content=b"not json", headers=FHIR_JSON)
    assert response.status_code == 401
    assert calls == []


def test_the_json_door_reads_the_same_definition() -> None:
    parsed = ECHO.parse_json({"message": "m", "tag": ["a", "b"], "about": {"reference": "Patient/p"}, "loud": None})
    assert parsed == {
        "message": "m",
        "times": None,
        "loud": None,
        "tag": ["a", "b"],
        "about": "Patient/p",
        "link": None,
    }
    for body, refusal in [
        ({"message": "m", "times": True}, "Parameter 'times' must be a whole number."),
        ({"message": "m", "loud": "yes"}, "Parameter 'loud' must be true or false."),
        ({"message": 5}, "Parameter 'message' must be a string."),
        ({"message": "m", "about": ["Patient/p"]}, "Parameter 'about' must be a reference string"),
        ({"message": "m", "x": 1, "y": 2}, "Unknown parameters 'x', 'y' for $echo"),
        ([], "The body must be a JSON object of the parameters: message, times"),
    ]:
        with pytest.raises(InvalidRequest) as refused:
            ECHO.parse_json(body)
        assert refused.value.diagnostics.startswith(refusal)


def test_a_definition_the_parser_cannot_read_is_refused_when_declared() -> None:
    odd = {**ECHO_DEFINITION, "code": "odd", "parameter": [{"name": "r", "use": "in", "type": "Resource"}]}
    registry = OperationRegistry()
    with pytest.raises(ValueError, match="type 'Resource' is not supported"):
        registry.add(Operation(odd, echo, access=("FHIR:Read", "FHIR:Communication")))
    registry.add(ECHO)
    with pytest.raises(ValueError, match=r"\$echo is declared twice"):
        registry.add(ECHO)
