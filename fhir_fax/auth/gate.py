"""The gate: the one access layer every read or write of a resource, document, preview or client goes through.

A decision has three parts, always taken together:

1. the client's **access policy** (``policies.py``), per resource: ``FHIR:Type:id``, ``Z3:bucket/key``,
   ``App:M2MClient:id`` (per-id Allow and Deny rules included);
2. the token's **SMART scopes** (``scopes.py``), which narrow every action, FHIR or not;
3. the **patient in context** of a token limited to one patient: FHIR resources must be in that patient's
   compartment, and documents must be carried by a fax (Communication) in it.

Handlers never decide: they ask the gate before acting (``authorize``), hand it what they loaded
(``admit``), let it shape searches (``search_filter``, ``include_filter``: per-id rules become a query
filter so pages and totals only count what may be shown), and tell it what was disclosed (``disclosed``,
``document_disclosed``), which writes the AuditEvent. Every refusal is audited by the guard.

A resource that may not be read (a Deny of ``FHIR:Read`` on it) cannot be seen another way either: not
by search, history, ``_include``/``_revinclude`` or a preview.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from ..errors import Forbidden
from ..fhir.compartments import PATIENT_COMPARTMENT, SUBSCRIBER_KEPT, compartment_filter, in_compartment
from ..fhir.search import SearchRegistry, merge_clauses
from ..fhir.store import PRIVATE, RESERVED, history_collection, public
from .clients import Clients
from .grants import narrows
from .guard import Guard, Principal
from .policies import PolicyError, Rule, beyond, denies, id_scope, parse_policy
from .scopes import ScopeError, parse_scopes, permits_action
from .smart_store import SmartStore
from .tokens import TokenError

READ = "FHIR:Read"
DIRECT = (READ, "FHIR:Create", "FHIR:Update", "FHIR:Delete")  # the others (history) also show the resource
AUDITED_READS = ("Communication", "DocumentReference")  # what carries a patient's faxed documents
# The Communication ids of the faxes that carry a document (``z3://bucket/key``; at a version, when given).
Carriers = Callable[[str, Any], Awaitable[list[str]]]
# The version of a document a send would pin now (its newest upload), or None.
Newest = Callable[[str], Awaitable[Any]]
# The patient a version of a document was uploaded under (the uploader's token's patient in context), or None.
Uploader = Callable[[Any], Awaitable[str | None]]


class Gate:
    def __init__(
        self,
        guard: Guard,
        registry: SearchRegistry,
        *,
        database: Any = None,
        carriers: Carriers | None = None,
        newest: Newest | None = None,
        uploader: Uploader | None = None,
        auditor: Any = None,
    ) -> None:
        """Built whole by the runtime (``fhir_fax.runtime``); without a database nothing is served."""
        self.guard = guard
        self.registry = registry
        self.database = database
        self.carriers = carriers
        self.newest = newest
        self.uploader = uploader
        self.auditor = auditor  # fhir_fax.audit.Auditor

    # -- who, and may they at all ------------------------------------------------------------------------

    async def identify(self, request: Request) -> Principal:
        return await self.guard.principal(request)

    async def authorize(self, request: Request, action: str, resource: str) -> Principal:
        """Policy and scopes for ``action`` on ``resource`` (before anything is loaded); 401/403 otherwise."""
        return await self.guard.require(request, action, resource)

    async def refuse(self, request: Request, principal: Principal, reason: str, action: str, resource: str) -> None:
        await self.guard._audit_refusal(request, principal.client_id, reason, action, resource)
        raise Forbidden(reason)

    async def patient_limit(self, request: Request, fhir_action: str, resource_type: str) -> str | None:
        return (await self.identify(request)).patient_limit(fhir_action, resource_type)

    # -- resources that were loaded ----------------------------------------------------------------------

    async def admit(self, request: Request, action: str, resources: list[dict[str, Any] | None]) -> None:
        """403 unless ``action`` may touch each resource: its own id's rules, and the patient's compartment.

        Reading it another way (history, search) also needs that no Deny of ``FHIR:Read`` covers it.
        """
        principal = await self.identify(request)
        for resource in resources:
            if resource is None:
                continue
            resource_type = resource["resourceType"]
            name = f"FHIR:{resource_type}:{resource['id']}" if resource.get("id") else f"FHIR:{resource_type}"
            refusal = principal.refusal(action, name)
            if refusal is None and action not in DIRECT and denies(principal.rules, READ, name):
                refusal = f"Client {principal.client_id}'s access policy does not allow {READ} on {name}."
            if refusal is not None:
                await self.refuse(request, principal, refusal, action, name)
            patient = principal.patient_limit(action, resource_type)
            what = f"{resource_type}/{resource['id']}" if resource.get("id") else "This resource"
            if resource_type in SUBSCRIBER_KEPT:
                if patient is not None and action != "FHIR:Create" and not await self.made_for(resource, patient):
                    reason = (
                        f"This token is limited to Patient/{patient}; {what} was not made by a token with "
                        f"Patient/{patient} in context ({action} refused). Create your own {resource_type}."
                    )
                    await self.refuse(request, principal, reason, action, name)
            elif patient is not None and not in_compartment(resource, patient, self.registry):
                reason = (
                    f"This token is limited to Patient/{patient}'s compartment; {what} is outside it "
                    f"({action} refused)."
                )
                await self.refuse(request, principal, reason, action, name)

    async def made_for(self, resource: dict[str, Any], patient: str) -> bool:
        """Was ``resource`` (a ``SUBSCRIBER_KEPT`` type) written by a token with ``patient`` in context?

        Its current version's recorded subscriber decides (a deleted one's: its last live version's). One not
        stored yet (a PUT that creates it) becomes the caller's own.
        """
        resource_type, resource_id = resource["resourceType"], resource.get("id")
        if not resource_id or self.database is None:
            return True
        current = await self.database[resource_type].find_one({"_id": resource_id}, {RESERVED: 1})
        if current is None:
            return True
        reserved = current[RESERVED]
        if reserved.get("deleted"):
            live = await self.database[history_collection(resource_type)].find_one(
                {f"{RESERVED}.id": resource_id, f"{RESERVED}.{PRIVATE}": {"$exists": True}},
                {RESERVED: 1},
                sort=[(f"{RESERVED}.version", -1)],
            )
            reserved = live[RESERVED] if live is not None else {}
        kept = reserved.get(PRIVATE)
        return isinstance(kept, dict) and kept.get("patient") == patient

    # -- searches ----------------------------------------------------------------------------------------

    async def search_filter(self, request: Request, resource_type: str) -> dict[str, Any]:
        """The filter every search of ``resource_type`` is narrowed by, or 403 when nothing could be shown.

        Matches need ``FHIR:Search`` on their own id and no Deny of ``FHIR:Read`` on it; a patient-limited
        token only sees its patient's compartment.
        """
        principal = await self.identify(request)
        whole = f"FHIR:{resource_type}"
        refusal = principal.scope_refusal("FHIR:Search", whole)
        if refusal is not None:
            await self.refuse(request, principal, refusal, "FHIR:Search", whole)
        searchable = id_scope(principal.rules, "FHIR:Search", resource_type)
        readable = id_scope(principal.rules, READ, resource_type)
        scope = searchable.without(readable)
        if scope.empty:
            denied = "FHIR:Read" if readable.type_denied and not searchable.empty else "FHIR:Search"
            reason = f"Client {principal.client_id}'s access policy does not allow {denied} on {whole}."
            await self.refuse(request, principal, reason, "FHIR:Search", whole)
        clauses = [scope.mongo_filter()]
        patient = principal.patient_limit("FHIR:Search", resource_type)
        if patient is not None:
            clauses.append(compartment_filter(resource_type, patient))
        return merge_clauses([c for c in clauses if c])

    async def include_filter(self, request: Request, resource_type: str) -> dict[str, Any] | None:
        """The filter for ``_include``d/``_revinclude``d resources of a type (None: none may be shown).

        Included resources are reads of other resources: ``FHIR:Read`` on each by the policy (per-id rules
        too), ``r`` on the type by the scopes, and the patient's compartment.
        """
        principal = await self.identify(request)
        scoped = principal.scopes or principal.scoped
        if scoped and not permits_action(principal.scopes, READ, f"FHIR:{resource_type}"):
            return None
        scope = id_scope(principal.rules, READ, resource_type)
        if scope.empty:
            return None
        clauses = [scope.mongo_filter()]
        if principal.limited(READ, resource_type):
            if principal.patient is None:
                return None
            clauses.append(compartment_filter(resource_type, principal.patient))
        return merge_clauses([c for c in clauses if c])

    async def allowed_among(self, request: Request, action: str, resources: list[str]) -> set[str]:
        """Which of ``resources`` the policy lets ``action`` reach one by one (listings filter by it)."""
        principal = await self.identify(request)
        return {resource for resource in resources if principal.may(action, resource)}

    # -- documents ---------------------------------------------------------------------------------------

    async def document(
        self, request: Request, action: str, resource: str, *, attaching: bool = False, version: Any = None
    ) -> Principal:
        """May ``action`` (a ``Z3:`` action) reach the document ``resource`` (``Z3:bucket/key``)?

        Policy and scopes as for anything; for a token limited to one patient, documents belong to the
        Communications (faxes) that carry them: reading needs a carrier in the patient's compartment,
        changing or deleting needs no carrier outside it, faxing (``attaching``, which also shows the pages
        in a preview) needs a carrier of the version it would pin inside, or none and that version uploaded
        under the same patient (the caller's own new upload: ``uploadedFor``), and listing is refused (it would
        name other patients' documents).
        ``version`` (the Z3 upload a download hands out) narrows reading to the faxes that pinned it.
        """
        principal = await self.authorize(request, action, resource)
        patient = principal.patient_limit_of(action, resource)
        if patient is None:
            return principal
        url = "z3://" + resource.removeprefix("Z3:")
        if action == "Z3:ListObjects":
            reason = f"This token is limited to Patient/{patient}; listing documents would show other patients'."
            await self.refuse(request, principal, reason, action, resource)
        if attaching and self.newest is not None:  # the send pins the newest upload: judge that one
            version = await self.newest(url)
        reading = action == "Z3:GetObject"
        carriers = await self.carrying(url, version if reading or attaching else None)
        inside = [c for c in carriers if in_compartment(c, patient, self.registry)]
        if attaching and not carriers and version is not None and not await self.uploaded_under(version, patient):
            reason = (
                f"This token is limited to Patient/{patient}; {url} was not uploaded under Patient/{patient} and "
                f"no fax in Patient/{patient}'s compartment carries it."
            )
            await self.refuse(request, principal, reason, action, resource)
        if reading and not attaching:
            if not inside:
                reason = (
                    f"This token is limited to Patient/{patient}; {url} is carried by no fax in "
                    f"Patient/{patient}'s compartment."
                )
                await self.refuse(request, principal, reason, action, resource)
        elif (attaching and carriers and not inside) or (not attaching and len(inside) < len(carriers)):
            reason = (
                f"This token is limited to Patient/{patient}; {url} is carried by a fax outside "
                f"Patient/{patient}'s compartment."
            )
            await self.refuse(request, principal, reason, action, resource)
        return principal

    async def uploaded_under(self, version: Any, patient: str) -> bool:
        """Was this version uploaded by a token with ``patient`` in context? (Unlimited clients' uploads: no.)"""
        return self.uploader is not None and await self.uploader(version) == patient

    async def carrying(self, url: str, version: Any = None) -> list[dict[str, Any]]:
        """The current Communications of the faxes that carry the document at ``url`` (that ``version``)."""
        if self.carriers is None or self.database is None:
            return []
        ids = await self.carriers(url, version)
        if not ids:
            return []
        cursor = self.database["Communication"].find({"_id": {"$in": ids}, f"{RESERVED}.deleted": False})
        return [public(doc) async for doc in cursor]

    # -- what was disclosed (the audit trail) ------------------------------------------------------------

    async def disclosed(self, request: Request, interaction: str, resources: list[dict[str, Any]]) -> None:
        """Audit a read: Communications (faxes carry health information) and DocumentReferences (faxes filed to
        a patient) are recorded; other types are not."""
        faxes = [r for r in resources if r.get("resourceType") in AUDITED_READS]
        if faxes and self.auditor is not None:
            principal = await self.identify(request)
            await self.auditor.read(interaction, faxes, principal.client_id, self.guard.address(request))

    async def document_disclosed(self, request: Request, resource: str, version: Any = None) -> None:
        """Audit that a document was handed out (a signed download URL): the document and the faxes it is in."""
        if self.auditor is None:
            return
        principal = await self.identify(request)
        url = "z3://" + resource.removeprefix("Z3:")
        carriers = await self.carrying(url, version)
        patient = principal.patient_limit_of("Z3:GetObject", resource)
        if patient is not None:
            carriers = [c for c in carriers if in_compartment(c, patient, self.registry)]
        await self.auditor.document_read(url, carriers, principal.client_id, self.guard.address(request))

    # -- subscriptions: notifications are reads made later, on behalf of who set the subscription up ------

    async def subscriber(self, request: Request) -> dict[str, Any]:
        """The caller, as kept with a Subscription it writes: whose rights each notification is checked against.

        A client of ours is kept by id (its current policy applies when a notification is sent, so a policy
        narrowed or a client deleted later narrows or stops its notifications); an external token's policy
        came with the token and is kept as it was. The token's scopes and patient in context are kept too, and
        the types its reads are kept to that patient for (``limited``): the dispatcher matches those only there.
        """
        principal = await self.identify(request)
        kept: dict[str, Any] = {
            "client": principal.client_id,
            "scopes": " ".join(str(s) for s in principal.scopes),
            "patient": principal.patient,
        }
        if principal.patient is not None:  # the types its reads are kept to the patient for: matched only there
            kept["limited"] = sorted(t for t in PATIENT_COMPARTMENT if principal.limited(READ, t))
        if principal.grant is not None:  # a signed-in user through an app: checked through that grant
            grant = await SmartStore(self.database).grant(principal.grant)
            if grant is not None:
                kept["grant"] = {"id": principal.grant, "app": grant["clientId"], "user": grant["userId"]}
        if principal.external:
            kept["policy"] = {
                "rule": [
                    {"resource": list(r.resources), "action": list(r.actions), "effect": r.effect}
                    for r in principal.rules
                ]
            }
        return kept

    async def notification_refusal(self, subscriber: dict[str, Any] | None, resource: dict[str, Any]) -> str | None:
        """Why ``subscriber`` (see ``subscriber``) may not be sent ``resource`` now, or None when it may.

        The same decision as a read of it (``admit``): policy and scopes on its id, and the patient's
        compartment for a patient-limited token. A refusal is audited.
        """
        resource_type = resource["resourceType"]
        name = f"FHIR:{resource_type}:{resource['id']}"
        if not subscriber:
            return "Nobody is recorded as the subscriber, so no rights can be checked; update the Subscription."
        principal, refusal = await self._subscriber_principal(subscriber)
        if principal is not None:
            refusal = principal.refusal(READ, name)
            patient = principal.patient_limit(READ, resource_type)
            if refusal is None and patient is not None and not in_compartment(resource, patient, self.registry):
                where = f"{resource_type}/{resource['id']}"
                refusal = f"The subscriber's token is limited to Patient/{patient}; {where} is outside it."
        if refusal is not None and self.auditor is not None:
            await self.auditor.refused(READ, name, str(subscriber.get("client")), None, f"notification: {refusal}")
        return refusal

    async def _subscriber_principal(self, subscriber: dict[str, Any]) -> tuple[Principal | None, str | None]:
        client_id = str(subscriber.get("client"))
        grant = subscriber.get("grant")
        if isinstance(grant, dict):
            patient = subscriber.get("patient")
            try:
                principal = await self.guard.user_principal(
                    str(grant.get("id")),
                    str(grant.get("app")),
                    str(grant.get("user")),
                    str(subscriber.get("scopes") or ""),
                    patient if isinstance(patient, str) else None,
                )
            except (TokenError, PolicyError, ScopeError) as error:
                return None, f"The subscriber's sign-in no longer gives access: {error}"
            return principal, None
        try:
            scopes = parse_scopes(str(subscriber.get("scopes") or ""))
            if "policy" in subscriber:
                rules = parse_policy(subscriber["policy"])
            else:
                record = await Clients(self.database).by_client_id(client_id)
                if record is None:
                    return None, f"The subscriber's client {client_id} no longer exists."
                rules = parse_policy(record["accessPolicy"])
        except (PolicyError, ScopeError) as error:
            return None, f"The subscriber's rights cannot be read: {error}"
        patient = subscriber.get("patient")
        external = "policy" in subscriber
        return Principal(client_id, rules, scopes, patient if isinstance(patient, str) else None, external), None

    async def notified(self, subscriber: dict[str, Any], resources: list[dict[str, Any]], endpoint: str) -> None:
        """Audit a notification that was delivered: a disclosure of the resource version to the subscriber."""
        faxes = [r for r in resources if r.get("resourceType") == "Communication"]
        if faxes and self.auditor is not None:
            await self.auditor.read("subscription-notification", faxes, str(subscriber.get("client")), endpoint)

    # -- clients -----------------------------------------------------------------------------------------

    async def listable(self, request: Request, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The M2M clients a listing may show: the same per-id rules as a search (list on each, no Deny of get)."""
        principal = await self.identify(request)
        return [
            record
            for record in records
            if principal.may("App:ListAllM2MClients", f"App:M2MClient:{record['_id']}")
            and not denies(principal.rules, "App:GetM2MClient", f"App:M2MClient:{record['_id']}")
        ]

    async def grant(self, request: Request, action: str, resource: str, policy: tuple[Rule, ...] | None,
                    target: tuple[Rule, ...] | None = None) -> Principal:  # fmt: skip
        """May the caller give ``policy`` to a client (create/update), or take over ``target``'s client?

        A client never creates or grants rights beyond its own: the new policy must be covered by the
        caller's, and a client whose rights exceed the caller's cannot be changed (its keys, secret or policy)
        or deleted by it, since that hands its rights over (or takes them from everyone using it). A token
        whose SMART scopes leave out anything its policy allows (``grants.narrows``) cannot give rights, since
        the new client would not be narrowed.
        """
        principal = await self.authorize(request, action, resource)
        giving = action != "App:DeleteM2MClient"  # deleting hands nothing over: the action's own scope is enough
        if giving and narrows(principal.scopes, principal.rules):  # scopes narrower than the policy
            granted = " ".join(str(s) for s in principal.scopes)
            reason = (
                f"The token's scopes ({granted}) narrow the client's rights, and a client it creates or changes "
                "would not be narrowed; use a token requested without a scope (it gets all that the policy allows)."
            )
            await self.refuse(request, principal, reason, action, resource)
        if target is not None and (extra := beyond(target, principal.rules)) is not None:
            reason = f"That client has rights your own policy does not ({extra}); you cannot change it."
            await self.refuse(request, principal, reason, action, resource)
        if policy is not None and (extra := beyond(policy, principal.rules)) is not None:
            reason = f"The access policy grants rights your own policy does not: {extra}. Narrow it to fit yours."
            await self.refuse(request, principal, reason, action, resource)
        return principal
