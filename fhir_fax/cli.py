"""The ``fhir-fax`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import DomainError
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "data_dir": getattr(args, "data_dir", None),
            "mongodb_uri": getattr(args, "mongodb_uri", None),
        }.items()
        if value is not None
    }
    if getattr(args, "load_fixtures", False):
        overrides["load_fixtures"] = True
    return Settings(**overrides)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .auth.addresses import TrustedProxies

    settings = _settings(args)
    base = settings.base_url or f"http://{settings.host}:{settings.port}"
    print(f"fhir-fax: FHIR API at {base}{settings.fhir_path}  (API docs at {base}/docs)", flush=True)
    if not settings.mongodb_uri:
        print(f"fhir-fax: embedded database, data in {settings.data_dir.resolve()}", flush=True)
    if settings.bootstrap_client_id and settings.bootstrap_client_secret:
        print(
            "fhir-fax: get a token with\n"
            f"  curl -s -X POST {base}/oauth/token -d grant_type=client_credentials "
            f"-d client_id={settings.bootstrap_client_id} -d client_secret={settings.bootstrap_client_secret}",
            flush=True,
        )
    else:
        print("fhir-fax: no client configured; create one with `fhir-fax clients create`", flush=True)
    if settings.bootstrap_user and settings.bootstrap_password:
        print(
            f"fhir-fax: SMART apps sign in at {base}/oauth/authorize as "
            f"{settings.bootstrap_user} / {settings.bootstrap_password}",
            flush=True,
        )
    if settings.fax_app_enabled:
        print(f"fhir-fax: the fax app is at {base}/apps/fax/", flush=True)
    # X-Forwarded-For/-Proto are believed from FHIR_FAX_TRUSTED_PROXIES only (uvicorn's own default trusts loopback).
    proxies = TrustedProxies.of(settings.trusted_proxies)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        **proxies.uvicorn_options(),
    )
    return 0


def _with_runtime(settings: Settings, work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run ``work(runtime)`` on the one runtime of the configured database (joining or starting the embedded one).

    Every command builds its objects through ``Runtime``, as the server does, so none of them is wired
    differently (an auditor forgotten, another carrier).
    """
    from .db import Database
    from .runtime import Runtime

    async def run() -> T:
        database = Database(settings)
        try:
            runtime = Runtime.build(settings, database.connect())
            try:
                return await work(runtime)
            finally:
                await runtime.close()
        finally:
            await database.close()

    return asyncio.run(run())


def fixtures_load(args: argparse.Namespace) -> int:
    from .fixtures import FIXTURES_DIR, load_fixtures

    directory = Path(args.directory) if args.directory else FIXTURES_DIR
    counts = _with_runtime(_settings(args), lambda runtime: load_fixtures(runtime.store, directory))
    print(f"fixtures: {counts['written']} written, {counts['unchanged']} unchanged")
    return 0


def numbers(args: argparse.Namespace) -> int:
    from .fax.phone import NumberProblem, check_fax_number

    settings = _settings(args)
    number = getattr(args, "number", None)
    if args.action == "offboard" and number is None and not args.all:
        print("fhir-fax: name the number to offboard, or pass --all", file=sys.stderr)
        return 2
    if number is not None:
        try:
            check_fax_number(number, require_valid=settings.require_valid_numbers)
        except NumberProblem as problem:
            print(f"fhir-fax: {problem}", file=sys.stderr)
            return 2

    async def work(runtime: Runtime) -> list[str]:
        registry = runtime.service.numbers
        if args.action == "onboard":
            return [await registry.onboard_for_project(number, settings.carrier, settings.carrier_fax_number)]
        if args.action == "offboard":
            return await registry.offboard(number)
        return await registry.list()

    try:
        result = _with_runtime(settings, work)
    except DomainError as error:
        print(f"fhir-fax: {error.diagnostics}", file=sys.stderr)
        return 1
    verb = {"onboard": "onboarded", "offboard": "offboarded", "list": "onboarded"}[args.action]
    if not result:
        print(f"no numbers {verb}")
    for item in result:
        print(f"{verb} {item}")
    return 0


def z3(args: argparse.Namespace) -> int:
    """``fhir-fax z3 put FILE z3://bucket/key`` and ``fhir-fax z3 get z3://bucket/key FILE``."""
    from .z3.locations import Z3UrlError, parse_z3_url

    settings = _settings(args)
    url, path = (args.destination, Path(args.file)) if args.action == "put" else (args.source, Path(args.file))
    try:
        location = parse_z3_url(url, ())
    except Z3UrlError as error:
        print(f"fhir-fax: {error}", file=sys.stderr)
        return 2
    if args.action == "put" and not path.is_file():
        print(f"fhir-fax: {path} is not a file", file=sys.stderr)
        return 2

    async def work(runtime: Runtime) -> str:
        store = runtime.z3
        if args.action == "put":
            from .fax.documents import sniff_type

            upload = await asyncio.to_thread(path.read_bytes)
            await store.put(location, upload, sniff_type(upload) or "application/octet-stream")
            return f"stored {path} ({len(upload)} bytes) at {location}"
        data = await store.read(location)
        if data is None:
            raise FileNotFoundError(f"there is no object at {location}")
        await asyncio.to_thread(path.write_bytes, data)
        return f"wrote {location} ({len(data)} bytes) to {path}"

    try:
        print(_with_runtime(settings, work))
    except FileNotFoundError as error:
        print(f"fhir-fax: {error}", file=sys.stderr)
        return 1
    return 0


def clients(args: argparse.Namespace) -> int:
    """``fhir-fax clients create --name N --policy FILE.json | list | rotate-secret ID | delete ID``."""
    import json as json_module

    from .auth.clients import Clients, public
    from .auth.policies import PolicyError

    settings = _settings(args)
    policy: Any = None
    if args.action == "create":
        try:
            policy = json_module.loads(Path(args.policy).read_text())
        except (OSError, ValueError) as error:
            print(f"fhir-fax: cannot read the policy file: {error}", file=sys.stderr)
            return 2

    async def work(runtime: Runtime) -> list[str]:
        registry = Clients(runtime.database)
        await registry.ensure_indexes()
        if args.action == "create":
            record, created_secret = await registry.create(args.name, policy, description=args.description)
            return [json_module.dumps({**public(record), "secret": created_secret}, indent=2)]
        if args.action == "list":
            return [f"{r['_id']}  {r['clientId']}  {r['name']}" for r in await registry.list()] or ["no clients"]
        if args.action == "rotate-secret":
            secret = await registry.rotate_secret(args.id)
            if secret is None:
                raise LookupError(f"no client {args.id}")
            return [f"new secret for {args.id}: {secret}"]
        if not await registry.delete(args.id):
            raise LookupError(f"no client {args.id}")
        return [f"deleted {args.id}"]

    try:
        lines = _with_runtime(settings, work)
    except PolicyError as error:
        print(f"fhir-fax: the policy is not valid: {error}", file=sys.stderr)
        return 2
    except LookupError as error:
        print(f"fhir-fax: {error.args[0]}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _password(args: argparse.Namespace) -> str | None:
    """The password from stdin (``--password-stdin``, first line) or a prompt asked twice; None when they differ."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass("Password: ")
    return first if getpass.getpass("Password again: ") == first else None


def users(args: argparse.Namespace) -> int:
    """``fhir-fax users create NAME [--fhir-user REF] (--policy FILE | --admin) | list | set-password NAME |
    disable NAME | enable NAME | delete NAME``: the people who sign in to SMART apps."""
    import json as json_module

    from .auth.clients import ALLOW_EVERYTHING
    from .auth.users import UserError, Users, public

    settings = _settings(args)
    policy: Any = None
    password: str | None = None
    if args.action == "create":
        if args.admin == bool(args.policy):
            print("fhir-fax: give the user an access policy: --policy FILE.json, or --admin", file=sys.stderr)
            return 2
        try:
            policy = ALLOW_EVERYTHING if args.admin else json_module.loads(Path(args.policy).read_text())
        except (OSError, ValueError) as error:
            print(f"fhir-fax: cannot read the policy file: {error}", file=sys.stderr)
            return 2
    if args.action in ("create", "set-password"):
        password = _password(args)
        if password is None:
            print("fhir-fax: the passwords differ", file=sys.stderr)
            return 2

    async def work(runtime: Runtime) -> list[str]:
        registry = Users(runtime.database)
        await registry.ensure_indexes()
        if args.action == "create":
            assert password is not None
            record = await registry.create(args.username, password, policy, fhir_user=args.fhir_user)
            return [json_module.dumps(public(record), indent=2)]
        if args.action == "list":
            return [
                f"{r['username']}  {r.get('fhirUser') or '-'}  {'disabled' if r.get('disabled') else 'enabled'}"
                for r in await registry.list()
            ] or ["no users"]
        if args.action == "set-password":
            assert password is not None
            done, verb = await registry.set_password(args.username, password), "new password for"
        elif args.action in ("disable", "enable"):
            done, verb = await registry.set_disabled(args.username, args.action == "disable"), f"{args.action}d"
        else:
            done, verb = await registry.delete(args.username), "deleted"
        if not done:
            raise LookupError(f"no user {args.username}")
        return [f"{verb} {args.username}"]

    return _print_lines(settings, work, UserError)


def _print_lines(settings: Settings, work: Callable[[Runtime], Awaitable[list[str]]], refused: type[Exception]) -> int:
    """Run a registry command and print its lines: exit 2 for input ``refused`` says is wrong, 1 for no such record."""
    try:
        lines = _with_runtime(settings, work)
    except refused as error:
        print(f"fhir-fax: {error}", file=sys.stderr)
        return 2
    except LookupError as error:
        print(f"fhir-fax: {error.args[0]}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def apps(args: argparse.Namespace) -> int:
    """``fhir-fax apps register --name N --redirect-uri URI... --scope S... [--confidential] [--jwks FILE]
    [--launch-url URL] | list | delete ID``: the SMART apps people may use."""
    import json as json_module

    from .auth.apps import AppError, Apps, public

    settings = _settings(args)
    jwks: Any = None
    if args.action == "register" and args.jwks:
        try:
            jwks = json_module.loads(Path(args.jwks).read_text())
        except (OSError, ValueError) as error:
            print(f"fhir-fax: cannot read the JWKS file: {error}", file=sys.stderr)
            return 2

    async def work(runtime: Runtime) -> list[str]:
        registry = Apps(runtime.database)
        await registry.ensure_indexes()
        if args.action == "register":
            record, secret = await registry.register(
                args.name,
                redirect_uris=args.redirect_uri,
                scopes=[s for item in args.scope for s in item.split()],
                app_type="confidential" if args.confidential or jwks else "public",
                launch_url=args.launch_url,
                jwks=jwks,
                client_id=args.client_id,
            )
            shown = {**public(record), **({"secret": secret} if secret else {})}
            return [json_module.dumps(shown, indent=2)]
        if args.action == "list":
            return [f"{r['_id']}  {r['clientId']}  {r['type']}  {r['name']}" for r in await registry.list()] or [
                "no apps"
            ]
        if not await registry.delete(args.id):
            raise LookupError(f"no app {args.id}")
        return [f"deleted {args.id}"]

    return _print_lines(settings, work, AppError)


def worker(args: argparse.Namespace) -> int:
    """Run a delivery worker alone until Ctrl-C or SIGTERM (any number may share one database)."""
    import signal

    settings = _settings(args)

    async def work(runtime: Runtime) -> None:
        await runtime.prepare()
        task = asyncio.create_task(runtime.worker().run())
        # Subscription notifications too: its own status writes wake it at once (any number may run).
        notifier = asyncio.create_task(runtime.subscriptions.run()) if settings.subscriptions_enabled else None
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        waiter = asyncio.create_task(stopping.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        for running in (task, notifier):
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running

    _with_runtime(settings, work)
    return 0


def send(args: argparse.Namespace) -> int:
    """Upload a document, send it, and show its status live until it is delivered or stopped."""
    from .fax.console import FIXTURE_SENDER, Console
    from .fax.documents import DocumentProblem
    from .fax.operation import SendFaxRequest

    settings = _settings(args)
    to = args.to
    request_fields = {"recipientNumber": to} if to.startswith("+") else {"recipient": to}

    async def work(runtime: Runtime) -> str:
        console = Console(runtime)
        media = await console.upload(Path(args.media))
        request = SendFaxRequest(
            media=media,
            quality=args.quality,
            sender=args.sender or FIXTURE_SENDER,
            patient=args.patient,
            **request_fields,
        )
        return await console.send_and_watch(request)

    try:
        final = _with_runtime(settings, work)
    except (DomainError, DocumentProblem, OSError) as error:
        print(f"fhir-fax: {getattr(error, 'diagnostics', error)}", file=sys.stderr)
        return 2
    return 0 if final == "DELIVERED" else 1


def demo(args: argparse.Namespace) -> int:
    """The seed's story on the fixtures, at 50x simulator speed unless FHIR_FAX_SIMULATOR_SPEED says more."""
    from .fax.console import Console

    settings = _settings(args)
    fast = {
        "simulator_speed": max(settings.simulator_speed, 50.0),
        "retry_delay_seconds": min(settings.retry_delay_seconds, 1.0),
    }
    settings = settings.model_copy(update=fast)
    return _with_runtime(settings, lambda runtime: Console(runtime).demo())


def inbound(args: argparse.Namespace) -> int:
    """``fhir-fax inbound simulate FILE --from +1... --to +1...``: receive FILE as if it had been faxed to ``--to``."""
    import json as json_module

    from .fax.phone import NumberProblem, check_fax_number
    from .fax.transports.simulator.inbound import NAME, simulated_failure, simulated_fax

    settings = _settings(args)
    path = Path(args.file)
    try:
        from_number, to_number = check_fax_number(args.from_number), check_fax_number(args.to)
    except NumberProblem as problem:
        print(f"fhir-fax: {problem}", file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"fhir-fax: {path} is not a file", file=sys.stderr)
        return 2
    if args.fail is not None:
        try:
            simulated_failure(args.fail)
        except ValueError as problem:
            print(f"fhir-fax: --fail: {problem}", file=sys.stderr)
            return 2

    async def work(runtime: Runtime) -> dict[str, Any]:
        await runtime.prepare()
        data = await asyncio.to_thread(path.read_bytes)
        notice, media = simulated_fax(data, from_number, to_number, args.id, args.fail)
        received = await runtime.reception.receive(NAME, notice, media, who="fhir-fax inbound simulate")
        return {"communication": received.communication, "task": received.task, "duplicate": received.duplicate}

    try:
        result = _with_runtime(settings, work)
    except DomainError as error:
        print(f"fhir-fax: {error.diagnostics}", file=sys.stderr)
        return 1
    if args.json:
        print(json_module.dumps(result, indent=2))
    else:
        communication, task = result["communication"], result["task"]
        seen = "already received" if result["duplicate"] else "received"
        print(f"{seen}: Communication/{communication['id']} ({communication['status']})")
        if task is not None:
            print(f"triage: Task/{task['id']} - {task['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhir-fax", description="Send faxes from a FHIR server.")
    commands = parser.add_subparsers(dest="command", required=True)

    def database_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--data-dir", type=Path, help="embedded database folder (FHIR_FAX_DATA_DIR)")
        command.add_argument("--mongodb-uri", help="use this MongoDB instead (FHIR_FAX_MONGODB_URI)")

    serve_command = commands.add_parser("serve", help="run the standalone server")
    serve_command.add_argument("--host", help="interface to listen on (FHIR_FAX_HOST)")
    serve_command.add_argument("--port", type=int, help="port to listen on (FHIR_FAX_PORT)")
    serve_command.add_argument("--load-fixtures", action="store_true", help="load the demo fixtures on start")
    serve_command.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    database_options(serve_command)
    serve_command.set_defaults(handler=serve)

    fixtures = commands.add_parser("fixtures", help="manage demo fixtures").add_subparsers(dest="action", required=True)
    load = fixtures.add_parser("load", help="load the demo fixtures into the datastore (idempotent)")
    load.add_argument("--directory", help="folder of FHIR JSON files (default: the bundled demo fixtures)")
    database_options(load)
    load.set_defaults(handler=fixtures_load)

    send_command = commands.add_parser("send", help="send a document and watch it go")
    send_command.add_argument("--media", required=True, help="PDF, TIFF, PNG or JPEG file to fax")
    send_command.add_argument("--to", required=True, help="E.164 number (+1...) or a reference (Practitioner/123)")
    send_command.add_argument("--from", dest="sender", help="sender reference (default: the fixtures' clinic)")
    send_command.add_argument("--patient", help="Patient/<id> the fax is about")
    send_command.add_argument("--quality", default="standard", choices=["standard", "fine", "superfine"])
    database_options(send_command)
    send_command.set_defaults(handler=send)

    demo_command = commands.add_parser("demo", help="send the fixtures' referral letter and watch it")
    database_options(demo_command)
    demo_command.set_defaults(handler=demo)

    z3_command = commands.add_parser("z3", help="put and get documents in Z3 storage").add_subparsers(
        dest="action", required=True
    )
    put = z3_command.add_parser("put", help="store FILE at z3://bucket/key")
    put.add_argument("file")
    put.add_argument("destination", help="z3://bucket/key")
    get = z3_command.add_parser("get", help="write z3://bucket/key to FILE")
    get.add_argument("source", help="z3://bucket/key")
    get.add_argument("file")
    for command in (put, get):
        database_options(command)
        command.set_defaults(handler=z3)

    clients_command = commands.add_parser("clients", help="manage machine clients").add_subparsers(
        dest="action", required=True
    )
    create = clients_command.add_parser("create", help="create a client; prints its id, client id and secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--policy", required=True, help="access policy JSON file")
    create.add_argument("--description")
    client_list = clients_command.add_parser("list", help="list clients")
    rotate = clients_command.add_parser("rotate-secret", help="give a client a new secret")
    rotate.add_argument("id")
    remove = clients_command.add_parser("delete", help="delete a client")
    remove.add_argument("id")
    for command in (create, client_list, rotate, remove):
        database_options(command)
        command.set_defaults(handler=clients)

    users_command = commands.add_parser("users", help="manage the people who sign in").add_subparsers(
        dest="action", required=True
    )
    user_create = users_command.add_parser("create", help="create a user (the password is asked for)")
    user_create.add_argument("username")
    user_create.add_argument("--fhir-user", help="who the user is: Practitioner/..., Patient/..., ...")
    user_create.add_argument("--policy", help="access policy JSON file")
    user_create.add_argument("--admin", action="store_true", help="allow everything (instead of --policy)")
    user_list = users_command.add_parser("list", help="list users")
    user_password = users_command.add_parser("set-password", help="give a user a new password")
    user_commands = [user_create, user_list, user_password]
    for name, text in (("disable", "stop a user signing in"), ("enable", "let a user sign in again"),
                       ("delete", "delete a user")):  # fmt: skip
        user_commands.append(users_command.add_parser(name, help=text))
    for command in user_commands:
        if command is not user_list and command is not user_create:
            command.add_argument("username")
        if command in (user_create, user_password):
            command.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        database_options(command)
        command.set_defaults(handler=users)

    apps_command = commands.add_parser("apps", help="manage SMART apps").add_subparsers(dest="action", required=True)
    register = apps_command.add_parser("register", help="register a SMART app; prints it (and a secret) once")
    register.add_argument("--name", required=True)
    register.add_argument("--redirect-uri", action="append", required=True, help="an exact redirect URI (repeat)")
    register.add_argument("--scope", action="append", required=True, help="scopes it may ask for (repeat)")
    register.add_argument("--launch-url", help="where an EHR opens the app")
    register.add_argument("--confidential", action="store_true", help="a confidential app with a secret")
    register.add_argument("--jwks", help="a JWKS file: a confidential app using private_key_jwt")
    register.add_argument("--client-id", help="choose the client id (default: a random one)")
    app_list = apps_command.add_parser("list", help="list apps")
    app_delete = apps_command.add_parser("delete", help="delete an app (by id or client id)")
    app_delete.add_argument("id")
    for command in (register, app_list, app_delete):
        database_options(command)
        command.set_defaults(handler=apps)

    worker_command = commands.add_parser("worker", help="run a delivery worker on its own")
    database_options(worker_command)
    worker_command.set_defaults(handler=worker)

    numbers_command = commands.add_parser("numbers", help="manage onboarded fax numbers").add_subparsers(
        dest="action", required=True
    )
    onboard = numbers_command.add_parser("onboard", help="onboard a number (or get one from the carrier)")
    onboard.add_argument("number", nargs="?", help="E.164 number, e.g. +12223334444")
    offboard = numbers_command.add_parser("offboard", help="release a number")
    offboard.add_argument("number", nargs="?", help="E.164 number to release")
    offboard.add_argument("--all", action="store_true", help="release every number")
    listing = numbers_command.add_parser("list", help="list onboarded numbers")
    for command in (onboard, offboard, listing):
        database_options(command)
        command.set_defaults(handler=numbers)

    inbound_command = commands.add_parser("inbound", help="received faxes").add_subparsers(dest="action", required=True)
    simulate = inbound_command.add_parser("simulate", help="receive FILE as if it had been faxed to --to")
    simulate.add_argument("file", help="PDF or TIFF document")
    simulate.add_argument("--from", dest="from_number", required=True, help="the caller's E.164 number")
    simulate.add_argument("--to", required=True, help="an onboarded E.164 number")
    simulate.add_argument("--id", help="the simulated carrier's fax id (repeat one to deliver the same fax twice)")
    simulate.add_argument("--fail", help="play a failed reception instead (BUSY, NO_ANSWER, FAILED, UNKNOWN, 486...)")
    simulate.add_argument("--json", action="store_true", help="print the Communication and Task as JSON")
    database_options(simulate)
    simulate.set_defaults(handler=inbound)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .logs import configure

    configure(Settings().log_format)
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
