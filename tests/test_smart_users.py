"""Users (argon2 passwords, fhirUser, policy) and SMART apps: the stores and the ``users`` / ``apps`` commands."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from fhir_fax import cli
from fhir_fax.auth.apps import AppError, Apps
from fhir_fax.auth.clients import ALLOW_EVERYTHING
from fhir_fax.auth.users import UserError, Users

READ_ONLY = {"rule": [{"resource": "FHIR:*", "action": ["FHIR:Read", "FHIR:Search"], "effect": "Allow"}]}


async def test_a_user_signs_in_with_the_password_only(database: Any) -> None:
    users = Users(database)
    await users.ensure_indexes()
    record = await users.create("dr.jones", "correct horse", READ_ONLY, fhir_user="Practitioner/jones")
    stored = await database["auth_users"].find_one({"_id": record["_id"]})
    assert stored["passwordHash"].startswith("$argon2id$") and "correct horse" not in json.dumps(stored, default=str)
    assert (await users.authenticate("dr.jones", "correct horse"))["fhirUser"] == "Practitioner/jones"
    assert await users.authenticate("dr.jones", "wrong horse!") is None
    assert await users.authenticate("nobody", "correct horse") is None
    assert await users.set_password("dr.jones", "battery staple")
    assert await users.authenticate("dr.jones", "correct horse") is None
    assert await users.authenticate("dr.jones", "battery staple") is not None
    assert await users.set_disabled("dr.jones")
    assert await users.authenticate("dr.jones", "battery staple") is None, "a disabled user cannot sign in"


@pytest.mark.parametrize(
    ("username", "password", "fhir_user", "policy", "message"),
    [
        ("bad name", "long enough", None, READ_ONLY, "A username is"),
        ("short", "short", None, READ_ONLY, "at least 8 characters"),
        ("who", "long enough", "Organization/1", READ_ONLY, "must be a Practitioner, PractitionerRole"),
        ("policy", "long enough", None, {"rule": [{"effect": "Maybe"}]}, "The access policy is not valid"),
    ],
)
async def test_users_that_cannot_be_created(
    database: Any, username: str, password: str, fhir_user: str | None, policy: Any, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        await Users(database).create(username, password, policy, fhir_user=fhir_user)
    assert await database["auth_users"].count_documents({}) == 0


async def test_usernames_are_unique_and_the_bootstrap_user_is_reset(database: Any) -> None:
    users = Users(database)
    await users.ensure_indexes()
    await users.create("admin", "first password", READ_ONLY)
    with pytest.raises(UserError, match="already a user"):
        await users.create("admin", "second password", READ_ONLY)
    await users.ensure_bootstrap("admin", "configured password")
    record = await users.authenticate("admin", "configured password")
    assert record is not None and record["accessPolicy"] == ALLOW_EVERYTHING
    await users.ensure_bootstrap("other-admin", "configured password")
    assert await users.authenticate("other-admin", "configured password") is not None


async def test_apps_keep_exact_redirect_uris_and_a_hashed_secret(database: Any) -> None:
    apps = Apps(database)
    await apps.ensure_indexes()
    record, secret = await apps.register(
        "Chart viewer",
        redirect_uris=["https://app.example/callback"],
        scopes="openid fhirUser launch/patient patient/*.rs",
        app_type="confidential",
    )
    assert secret and record["scopes"] == ["openid", "fhirUser", "launch/patient", "patient/*.rs"]
    assert await apps.check_secret(record, secret) and not await apps.check_secret(record, secret + "x")
    public_app, none = await apps.register("Public", redirect_uris=["http://localhost:9/cb"], scopes=["openid"])
    assert none is None and public_app["type"] == "public" and "secretHash" not in public_app
    assert await apps.delete(public_app["clientId"])
    assert [a["name"] for a in await apps.list()] == ["Chart viewer"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"redirect_uris": ["/relative"]}, "absolute http"),
        ({"redirect_uris": ["https://app.example/cb#frag"]}, "without a fragment"),
        ({"redirect_uris": []}, "non-empty list"),
        ({"scopes": "patient/Communication.xyz"}, "not a SMART scope"),
        ({"scopes": "admin"}, "not a scope this server grants"),
        ({"app_type": "secret"}, "type must be one of"),
        ({"secret": "s3cret"}, "A public app has neither"),
    ],
)
async def test_apps_that_cannot_be_registered(database: Any, fields: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"redirect_uris": ["https://app.example/cb"], "scopes": "openid", **fields}
    with pytest.raises(AppError, match=message):
        await Apps(database).register("app", **arguments)
    assert await database["smart_apps"].count_documents({}) == 0


async def test_the_command_line_manages_users_and_apps(
    database: Any, mongo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FHIR_FAX_MONGODB_URI", mongo_uri)
    monkeypatch.setenv("FHIR_FAX_DATABASE_NAME", database.name)
    monkeypatch.setenv("FHIR_FAX_DATA_DIR", str(tmp_path / "cli"))
    name = f"nurse-{uuid.uuid4().hex[:6]}"

    async def run(*arguments: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return await asyncio.to_thread(cli.main, list(arguments))

    assert await run("users", "create", name, "--admin", "--fhir-user", "Practitioner/n1", "--password-stdin",
                     stdin="a long password\n") == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["fhirUser"] == "Practitioner/n1"
    assert await Users(database).authenticate(name, "a long password") is not None
    assert await run("users", "set-password", name, "--password-stdin", stdin="another password\n") == 0
    assert await Users(database).authenticate(name, "another password") is not None
    assert await run("users", "disable", name) == 0
    capsys.readouterr()
    assert await run("users", "list") == 0
    assert f"{name}  Practitioner/n1  disabled" in capsys.readouterr().out
    assert await run("users", "create", "x", "--password-stdin", stdin="a long password\n") == 2
    assert "--policy FILE.json, or --admin" in capsys.readouterr().err
    assert await run("users", "delete", name) == 0
    assert await run("users", "delete", name) == 1
    assert f"no user {name}" in capsys.readouterr().err
    assert await database["auth_users"].count_documents({}) == 0

    assert await run("apps", "register", "--name", "Viewer", "--redirect-uri", "https://viewer.example/cb",
                     "--scope", "openid fhirUser", "--scope", "patient/*.rs", "--confidential") == 0  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    assert shown["secret"] and shown["scopes"] == ["openid", "fhirUser", "patient/*.rs"]
    assert await run("apps", "register", "--name", "Bad", "--redirect-uri", "nope", "--scope", "openid") == 2
    assert "absolute http(s) URL" in capsys.readouterr().err
    assert await run("apps", "list") == 0
    assert shown["clientId"] in capsys.readouterr().out
    assert await run("apps", "delete", shown["id"]) == 0
    assert await database["smart_apps"].count_documents({}) == 0
