"""``python -m flask_amocrm.sandbox``: run a local amoCRM until killed."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from werkzeug.serving import make_server

from .app import create_app
from .server import ArrivalHandler, stamp_arrivals


def command_line() -> argparse.ArgumentParser:
    """The command line's parser (docs/sandbox.md lists its options)."""
    parser = argparse.ArgumentParser(
        prog="python -m flask_amocrm.sandbox",
        description="A local amoCRM that speaks API v4.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=7,
        help="requests per second per token (0: no limit)",
    )
    parser.add_argument(
        "--block-after",
        type=int,
        default=20,
        help="429s within a minute before the token is blocked",
    )
    parser.add_argument("--block-seconds", type=float, default=60)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument(
        "--token", default="sandbox-token", help="the long-lived token to accept"
    )
    parser.add_argument("--client-id", default="sandbox-client")
    parser.add_argument("--client-secret", default="sandbox-secret")
    parser.add_argument("--redirect-uri", default=None)
    parser.add_argument("--access-token-ttl", type=int, default=86400)
    parser.add_argument("--subdomain", default="sandbox")
    parser.add_argument(
        "--seed-contacts",
        type=int,
        default=0,
        metavar="N",
        help="add N made-up contacts to the seeded account (and after each reset)",
    )
    parser.add_argument("--seed-companies", type=int, default=0, metavar="N")
    parser.add_argument(
        "--state",
        default=None,
        metavar="FILE",
        help="load the account from FILE and save changes to it",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    return command_line().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM."""
    args = parse_args(argv)
    app = create_app(
        token=args.token,
        rate_limit=args.rate_limit,
        block_after=args.block_after,
        block_seconds=args.block_seconds,
        latency_ms=args.latency_ms,
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uri=args.redirect_uri,
        access_token_ttl=args.access_token_ttl,
        state_file=args.state,
        subdomain=args.subdomain,
        seed_contacts=args.seed_contacts,
        seed_companies=args.seed_companies,
    )
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=ArrivalHandler
    )
    stamp_arrivals(server.socket)
    url = f"http://{args.host}:{server.server_port}"
    print(f"amoCRM sandbox: {url}  token: {args.token}", flush=True)
    if args.client_id:
        print(
            f"OAuth: client_id={args.client_id} client_secret={args.client_secret} "
            f"authorize at {url}/oauth?client_id={args.client_id}",
            flush=True,
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store = app.extensions["amocrm_sandbox"].store
        if store.state_file:
            store.save()
        print("amoCRM sandbox stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
