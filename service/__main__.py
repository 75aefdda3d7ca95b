"""Command line: serve, migrate, dev, emulator, clients create, keys rotate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from service.config import ConfigError, Settings
from service.config_loading import load_database_url, load_settings
from service.connections.stored_keys import missing_keys_problem
from service.db.migrations import migrate
from service.logs import configure_logging

if TYPE_CHECKING:
    from service.apikeys.clients import ClientCreate


def _cmd_serve(args: argparse.Namespace) -> None:
    from service.app import begin_shutdown, create_app
    from service.web.serving import make_server, run_event_loop, serve_until_signalled

    settings = load_settings(require_database=True)
    configure_logging(settings.log_level, settings.log_format)
    missing, orphaned = asyncio.run(_stored_state_problems(settings))
    problems = [missing_keys_problem(missing)] if missing else []
    problems += [
        f"instance {name!r} still has {count} connection(s) but is not configured: keep it"
        " in BROKER_INSTANCES_FILE (the BROKER_WORKFRONT_URL variables for 'default'),"
        " or delete its connections first"
        for name, count in orphaned
    ]
    if problems:
        raise ConfigError(problems)
    app = create_app(settings)
    server = make_server(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        header_timeout=settings.header_timeout_seconds,
        max_connections=settings.max_connections or None,
    )
    run_event_loop(serve_until_signalled(server, on_signal=lambda: begin_shutdown(app)))


def _cmd_migrate(_: argparse.Namespace) -> None:
    configure_logging()
    migrate(load_database_url())
    print("database schema is at the newest revision")


def _cmd_emulator(args: argparse.Namespace) -> None:
    from service.emulator import EmulatorSettings, run_emulator

    configure_logging()
    settings = EmulatorSettings(
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uri=args.redirect_uri,
        domain=args.domain,
        lane=args.lane,
    )
    print(f"Workfront emulator on http://{args.host}:{args.port}", flush=True)
    asyncio.run(run_emulator(host=args.host, port=args.port, settings=settings))


def _cmd_dev(args: argparse.Namespace) -> None:
    from service.dev import run_dev

    configure_logging()
    asyncio.run(
        run_dev(
            host=args.host,
            port=args.port,
            emulator_port=args.emulator_port,
            preview_port=args.preview_port,
        )
    )


async def _create_client(spec: ClientCreate) -> str:
    from service.apikeys.clients import create_client
    from service.db.engine import make_database, make_engine

    engine = make_engine(load_database_url(), pool_size=1)
    try:
        created = await create_client(make_database(engine), spec, created_by=None)
    finally:
        await engine.dispose()
    return created.api_key


def _cmd_clients_create(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from service.apikeys.clients import ClientCreate

    try:
        spec = ClientCreate(
            name=args.name,
            scopes=args.scope,
            instances=args.instance,
            connections=args.connections,
        )
    except ValidationError as exc:
        raise ConfigError(
            [f"--{e['loc'][0]}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()]
        ) from None
    key = asyncio.run(_create_client(spec))
    reach = "every instance" if spec.instances is None else ", ".join(spec.instances)
    print(
        f"created API client {spec.name!r} with scopes {', '.join(spec.scopes)};"
        f" reaches {spec.connections} connections on {reach}"
    )
    print("its key (shown this once, store it now):")
    print(key)


async def _rotate_keys(batch_size: int) -> tuple[int, str]:
    from service.connections.key_rotation import RotationStuck, reencrypt_all
    from service.runtime import open_runtime

    settings = load_settings(require_database=True)
    async with open_runtime(settings) as runtime:
        try:
            changed = await reencrypt_all(runtime.database, runtime.cipher, batch_size=batch_size)
        except RotationStuck as stuck:
            raise ConfigError(
                [
                    f"BROKER_ENCRYPTION_KEYS: {stuck.left} connection(s) stay under another key: "
                    f"is every replica running with {runtime.cipher.primary_key_id!r} first?"
                ]
            ) from None
        return changed, runtime.cipher.primary_key_id


def _cmd_keys_rotate(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ConfigError(["--batch-size: must be at least 1"])
    configure_logging()
    changed, primary = asyncio.run(_rotate_keys(args.batch_size))
    print(f"re-encrypted {changed} connection(s) under the primary key {primary!r}")
    print("every stored value now uses it; the other keys may be removed")


async def _stored_state_problems(settings: Settings) -> tuple[list[str], list[tuple[str, int]]]:
    """What the database holds that this configuration cannot serve: key ids
    the keyring lacks, and instances with connections that are not configured
    (name, count). Nothing when it cannot tell yet."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from service.connections.stored_keys import missing_key_ids
    from service.crypto import TokenCipher
    from service.db.engine import make_engine
    from service.db.migrations import alembic_head

    cipher = TokenCipher.from_spec(settings.encryption_keys.get_secret_value())
    engine = make_engine(load_database_url(), pool_size=1)
    try:
        async with engine.connect() as conn:
            missing = await missing_key_ids(conn, cipher)
            revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            if revision != alembic_head():
                # Not migrated yet: connections still name their instance by host.
                return missing, []
            counts = await conn.execute(
                text("SELECT instance, count(*) FROM connections GROUP BY instance ORDER BY 1")
            )
            orphaned = [
                (str(name), int(count)) for name, count in counts if name not in settings.instances
            ]
            return missing, orphaned
    except (SQLAlchemyError, OSError) as exc:
        # No database yet, or no schema: /readyz reports it and checks again.
        logging.getLogger("service").warning(
            "start-up: stored encryption keys and instances not checked (%s)",
            type(exc).__name__,
        )
        return [], []
    finally:
        await engine.dispose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the broker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=_cmd_serve)

    commands.add_parser("migrate", help="bring the schema to the newest revision").set_defaults(
        func=_cmd_migrate
    )

    dev = commands.add_parser("dev", help="the all-in-one demo")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--emulator-port", type=int, default=8001)
    dev.add_argument(
        "--preview-port",
        type=int,
        default=None,
        help="the preview lane's emulator (default: --emulator-port + 1)",
    )
    dev.set_defaults(func=_cmd_dev)

    emulator = commands.add_parser("emulator", help="run only the Workfront emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8001)
    emulator.add_argument("--client-id", default="demo-client")
    emulator.add_argument("--client-secret", default="demo-secret")
    emulator.add_argument("--redirect-uri", default=None)
    emulator.add_argument("--domain", default="emulator")
    emulator.add_argument("--lane", default="my")
    emulator.set_defaults(func=_cmd_emulator)

    clients = commands.add_parser("clients", help="manage API clients").add_subparsers(
        dest="clients_command", required=True
    )
    create = clients.add_parser("create", help="create an API client and print its key once")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", action="append", required=True, dest="scope")
    create.add_argument(
        "--instance",
        action="append",
        default=None,
        help="an instance the key reaches (repeat for more; none given: all)",
    )
    create.add_argument(
        "--connections",
        choices=("all", "own"),
        default="all",
        help="own: only the connections brought in through this client's connect sessions",
    )
    create.set_defaults(func=_cmd_clients_create)

    keys = commands.add_parser("keys", help="encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    rotate = keys.add_parser("rotate", help="re-encrypt every token under the primary key")
    rotate.add_argument("--batch-size", type=int, default=500, help="rows per transaction")
    rotate.set_defaults(func=_cmd_keys_rotate)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        from service.db.errors import is_database_outage

        if not is_database_outage(exc):
            raise
        # One line, not a traceback; never the URL (it may carry a password).
        print(
            f"error: cannot reach the database of BROKER_DATABASE_URL ({type(exc).__name__})",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
