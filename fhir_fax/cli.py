"""The ``fhir-fax`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .settings import Settings


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

    settings = _settings(args)
    base = settings.base_url or f"http://{settings.host}:{settings.port}"
    print(f"fhir-fax: FHIR API at {base}{settings.fhir_path}  (API docs at {base}/docs)", flush=True)
    if not settings.mongodb_uri:
        print(f"fhir-fax: embedded database, data in {settings.data_dir.resolve()}", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level)
    return 0


def fixtures_load(args: argparse.Namespace) -> int:
    from .db import Database
    from .fhir.store import ResourceStore
    from .fixtures import FIXTURES_DIR, load_fixtures

    settings = _settings(args)

    async def run() -> dict[str, int]:
        database = Database(settings)
        try:
            store = ResourceStore(database.connect())
            return await load_fixtures(store, Path(args.directory) if args.directory else FIXTURES_DIR)
        finally:
            await database.close()

    counts = asyncio.run(run())
    print(f"fixtures: {counts['written']} written, {counts['unchanged']} unchanged")
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
    serve_command.add_argument("--load-fixtures", action="store_true", help="load fixtures/ on start")
    serve_command.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    database_options(serve_command)
    serve_command.set_defaults(handler=serve)

    fixtures = commands.add_parser("fixtures", help="manage demo fixtures").add_subparsers(dest="action", required=True)
    load = fixtures.add_parser("load", help="load fixtures/ into the datastore (idempotent)")
    load.add_argument("--directory", help="folder of FHIR JSON files (default: the bundled fixtures/)")
    database_options(load)
    load.set_defaults(handler=fixtures_load)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
