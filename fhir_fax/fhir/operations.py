"""FHIR operations declared once: an OperationDefinition plus a handler gives everything else.

One ``Operation`` is the route (``POST [base]/Type/$name``, and ``[base]/Type/{id}/$name`` or
``[base]/$name`` when the definition says ``instance`` or ``system``), the CapabilityStatement entry,
the definition stored at start-up, and the parsing of its inputs: the FHIR ``Parameters`` body and,
for SDK-shaped routes, a flat JSON object (``parse_json``). Both parsers read the definition alone
(names, value types, cardinality, reference targets), so what ``/metadata`` advertises and what the
server accepts cannot drift apart. Adding an operation is one declaration and one ``registry.add``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response

from .errors import InvalidRequest
from .http import FHIRRoute, read_json
from .models import validate_resource

if TYPE_CHECKING:
    from .context import FHIRContext

PROFILE = "http://hl7.org/fhir/StructureDefinition/"

# FHIR type of an in-parameter -> (the Parameters value[x] key, the JSON type of its value, how the SDK door says it)
VALUE_TYPES: dict[str, tuple[str, type, str]] = {
    "string": ("valueString", str, "a string"),
    "code": ("valueCode", str, "a string"),
    "url": ("valueUrl", str, "a string"),
    "uri": ("valueUri", str, "a string"),
    "canonical": ("valueCanonical", str, "a string"),
    "id": ("valueId", str, "a string"),
    "date": ("valueDate", str, "a string"),
    "dateTime": ("valueDateTime", str, "a string"),
    "instant": ("valueInstant", str, "a string"),
    "boolean": ("valueBoolean", bool, "true or false"),
    "integer": ("valueInteger", int, "a whole number"),
    "positiveInt": ("valuePositiveInt", int, "a whole number"),
    "unsignedInt": ("valueUnsignedInt", int, "a whole number"),
    "Reference": ("valueReference", dict, "a reference string such as 'Practitioner/123'"),
}

Inputs = dict[str, Any]  # parameter name -> value (a list when the parameter may repeat); references as strings


@dataclass(frozen=True)
class Parameter:
    """One in-parameter of a definition, read once when the operation is declared."""

    name: str
    type: str
    min: int
    max: int | None  # None: unbounded ("*")
    targets: tuple[str, ...]
    documentation: str

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> Parameter:
        kind = item["type"]
        if kind not in VALUE_TYPES:
            raise ValueError(f"Parameter {item['name']!r}: type {kind!r} is not supported by the operation parser.")
        upper = item.get("max", "1")
        return cls(
            name=item["name"],
            type=kind,
            min=int(item.get("min", 0)),
            max=None if upper == "*" else int(upper),
            targets=tuple(p.removeprefix(PROFILE) for p in item.get("targetProfile", [])),
            documentation=item.get("documentation", ""),
        )

    @property
    def value_key(self) -> str:
        return VALUE_TYPES[self.type][0]

    @property
    def repeats(self) -> bool:
        return self.max is None or self.max > 1

    def check_type(self, value: Any) -> Any:
        """``value`` as the handler sees it (a reference as its string), or a 400 naming the parameter."""
        _, python_type, shape = VALUE_TYPES[self.type]
        if self.type == "Reference":
            reference = value.get("reference") if isinstance(value, dict) else value
            if not isinstance(reference, str):
                raise InvalidRequest(f"Parameter '{self.name}' must be {shape}.", expression=[self.name])
            return reference
        if not isinstance(value, python_type) or (python_type is int and isinstance(value, bool)):
            raise InvalidRequest(f"Parameter '{self.name}' must be {shape}.", expression=[self.name])
        return value


class Signature:
    """The in-parameters of a definition and the two parsers that read them (no handler: also for SDK doors)."""

    def __init__(self, definition: Mapping[str, Any]) -> None:
        self.code = str(definition["code"])
        self.parameters = {p["name"]: Parameter.of(p) for p in definition.get("parameter", []) if p["use"] == "in"}

    def targets(self, name: str) -> tuple[str, ...]:
        """Resource types a Reference parameter may point to, as the definition says."""
        return self.parameters[name].targets

    # -- parsing ---------------------------------------------------------------------------------------

    def _refuse_unknown(self, names: list[str]) -> None:
        unknown = [n for n in dict.fromkeys(names) if n not in self.parameters]
        if unknown:
            listed = ", ".join(repr(n) for n in unknown)
            noun = "parameter" if len(unknown) == 1 else "parameters"
            raise InvalidRequest(
                f"Unknown {noun} {listed} for ${self.code}; known: {', '.join(self.parameters)}.",
                expression=[str(n) for n in unknown],
            )

    def _complete(self, given: dict[str, list[Any]]) -> Inputs:
        """Cardinality checks, then the inputs (single values unwrapped, absent optional ones None)."""
        for name, values in given.items():  # what was given wrongly first, then what is missing
            upper = self.parameters[name].max
            if upper is not None and len(values) > upper:
                times = "once" if upper == 1 else f"{upper} times"
                raise InvalidRequest(f"Parameter '{name}' may appear only {times}.", expression=[name])
        inputs: Inputs = {}
        for name, parameter in self.parameters.items():
            values = [v for v in given.get(name, []) if v is not None and v != ""]
            if len(values) < parameter.min:
                detail = f": {parameter.documentation}" if parameter.documentation else "."
                needed = "is required" if parameter.min == 1 else f"must be given at least {parameter.min} times"
                raise InvalidRequest(f"Parameter '{name}' {needed}{detail}", expression=[name])
            inputs[name] = values if parameter.repeats else (values[0] if values else None)
        return inputs

    def parse_parameters(self, body: Any) -> Inputs:
        """Inputs from a FHIR ``Parameters`` resource, checked against the definition."""
        resource = validate_resource(body, "Parameters")
        items = resource.get("parameter", [])
        self._refuse_unknown([item.get("name") for item in items])
        given: dict[str, list[Any]] = {}
        for item in items:
            parameter = self.parameters[item["name"]]
            key = parameter.value_key
            present = [k for k in item if k.startswith("value") or k in ("resource", "part")]
            if present != [key]:
                shown = f", not {', '.join(present)}" if present else ""
                raise InvalidRequest(
                    f"Parameter '{parameter.name}' must be given as {key}{shown}.", expression=[parameter.name]
                )
            value = item[key]
            if parameter.type == "Reference" and not isinstance(value.get("reference"), str):
                raise InvalidRequest(
                    f"Parameter '{parameter.name}' must be a valueReference with a 'reference' such as "
                    "'Practitioner/123'.",
                    expression=[parameter.name],
                )
            given.setdefault(parameter.name, []).append(parameter.check_type(value))
        return self._complete(given)

    def parse_json(self, body: Any) -> Inputs:
        """Inputs from a flat JSON object (``{"media": ..., "quality": ...}``), as SDK-shaped routes take them."""
        if not isinstance(body, dict):
            raise InvalidRequest(f"The body must be a JSON object of the parameters: {', '.join(self.parameters)}.")
        self._refuse_unknown(list(body))
        given: dict[str, list[Any]] = {}
        for name, value in body.items():
            if value is None:
                continue
            parameter = self.parameters[name]
            values = value if parameter.repeats and isinstance(value, list) else [value]
            given[name] = [parameter.check_type(v) for v in values]
        return self._complete(given)


@dataclass(frozen=True)
class OperationCall:
    """One invocation, as the handler receives it."""

    request: Request
    inputs: Inputs
    resource_type: str | None = None
    resource_id: str | None = None


Handler = Callable[[OperationCall], Awaitable[Response]]


@dataclass(frozen=True)
class Operation:
    """An OperationDefinition and its handler.

    ``access`` is the (action, resource) the caller must be allowed before the body is even read;
    nothing is served unchecked. The handler may check more once it knows the inputs.
    """

    definition: dict[str, Any]
    handler: Handler
    access: tuple[str, str]
    summary: str = ""
    tags: list[str] = field(default_factory=lambda: ["FHIR operations"])

    @property
    def code(self) -> str:
        return str(self.definition["code"])

    @property
    def url(self) -> str:
        return str(self.definition["url"])

    @property
    def resource_types(self) -> list[str]:
        return list(self.definition.get("resource", []))

    @cached_property
    def signature(self) -> Signature:
        return Signature(self.definition)

    @property
    def parameters(self) -> dict[str, Parameter]:
        return self.signature.parameters

    def parse_parameters(self, body: Any) -> Inputs:
        return self.signature.parse_parameters(body)

    def parse_json(self, body: Any) -> Inputs:
        return self.signature.parse_json(body)

    # -- what it declares ------------------------------------------------------------------------------

    def levels(self) -> list[tuple[str | None, bool]]:
        """(resource type or None for system level, instance level?) pairs this operation is invoked at."""
        found: list[tuple[str | None, bool]] = []
        if self.definition.get("system"):
            found.append((None, False))
        for resource_type in self.resource_types:
            if self.definition.get("type"):
                found.append((resource_type, False))
            if self.definition.get("instance"):
                found.append((resource_type, True))
        return found


class OperationRegistry:
    """The operations a server offers; each is routed, listed in ``/metadata`` and stored from here."""

    def __init__(self) -> None:
        self._operations: dict[str, Operation] = {}

    def add(self, operation: Operation) -> Operation:
        if operation.code in self._operations:
            raise ValueError(f"Operation ${operation.code} is declared twice.")
        operation.parameters  # noqa: B018 - an unsupported parameter type fails at declaration, not at request
        self._operations[operation.code] = operation
        return operation

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._operations.values())

    def __getitem__(self, code: str) -> Operation:
        return self._operations[code]

    def offered(self) -> list[tuple[str, str]]:
        """(owner, code) pairs for the 405 check: owner ``Type``, ``Type/{id}`` (instance level) or ``""`` (system)."""
        return [
            ((resource_type or "") + ("/{id}" if instance else ""), operation.code)
            for operation in self
            for resource_type, instance in operation.levels()
        ]

    def definitions(self) -> list[dict[str, Any]]:
        """The OperationDefinitions to store, so clients can read what ``/metadata`` points at."""
        return [operation.definition for operation in self]

    def capability_entries(self, resource_type: str | None) -> list[dict[str, str]]:
        """CapabilityStatement ``operation`` entries for ``resource_type`` (None: system level)."""
        return [
            {"name": operation.code, "definition": operation.url}
            for operation in self
            if any(level == resource_type for level, _ in operation.levels())
        ]


def build_operation_router(context: FHIRContext) -> APIRouter:
    """``POST`` routes for every registered operation at every level its definition declares."""
    router = APIRouter(route_class=FHIRRoute.limited(context.settings.max_body_bytes))
    for operation in context.operations:
        for resource_type, instance in operation.levels():
            path = (f"/{resource_type}" if resource_type else "") + ("/{resource_id}" if instance else "")
            router.add_api_route(
                f"{path}/${operation.code}",
                _endpoint(context, operation, resource_type),
                methods=["POST"],
                summary=operation.summary or operation.definition.get("title", f"${operation.code}"),
                tags=list(operation.tags),
                name=f"{resource_type or 'system'}{'-instance' if instance else ''}-{operation.code}",
            )
    return router


def _endpoint(
    context: FHIRContext, operation: Operation, resource_type: str | None
) -> Callable[..., Awaitable[Response]]:
    async def invoke(request: Request) -> Response:
        await context.authorize(request, *operation.access)  # before the body is read
        body = await read_json(request, context.settings.max_body_bytes)
        inputs = operation.parse_parameters(body)
        resource_id = request.path_params.get("resource_id")
        return await operation.handler(OperationCall(request, inputs, resource_type, resource_id))

    return invoke
