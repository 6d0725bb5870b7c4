"""`ddim serve`: the interactive page and JSON API (see `ddim.serve`), on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from ddim.cli._args import device_arg, int_at_least
from ddim.loading import load

SERVE_MODEL = "mnist"
SERVE_EXAMPLES = """examples:
  ddim serve                                 the shipped MNIST model on http://127.0.0.1:8000
  ddim serve --model toy --port 8080         the analytic toy model
  ddim serve --model run/ema.safetensors --max-n 16 --max-steps 100 --max-queue 2
  ddim serve --host 0.0.0.0                  reachable from other machines: anyone may use it
"""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="an interactive web page to sample, watch, interpolate and invert",
        description="Serve one model: a web page and a JSON API (OpenAPI schema at /openapi.json).",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default=SERVE_MODEL, help=f"built-in name or checkpoint path (default: {SERVE_MODEL})"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument(
        "--port",
        type=int_at_least(0, 65535),
        default=8000,
        help="TCP port, 0 for any free one (default: 8000)",
    )
    p.add_argument(
        "--device", type=device_arg, default="auto", help="cpu, cuda, cuda:N or auto (default: auto)"
    )
    p.add_argument("--max-n", type=int_at_least(1), default=64, help="images per request (default: 64)")
    p.add_argument("--max-steps", type=int_at_least(1), default=200, help="sampling steps S (default: 200)")
    p.add_argument(
        "--max-frames", type=int_at_least(2), default=16, help="interpolation frames (default: 16)"
    )
    p.add_argument(
        "--max-upload-kb", type=int_at_least(1), default=2048, help="upload size in KiB (default: 2048)"
    )
    p.add_argument(
        "--max-queue", type=int_at_least(0), default=4,
        help="jobs that may wait behind the running one; more get 429 (default: 4)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ddim.serve import Limits, create_app
    except ModuleNotFoundError as e:
        missing = f"ddim serve needs the serve extra ({e.name} is missing): pip install 'ddim[serve]'"
        raise ValueError(missing) from None
    limits = Limits(
        max_n=args.max_n, max_steps=args.max_steps, max_frames=args.max_frames,
        max_upload_bytes=args.max_upload_kb * 1024, max_queue=args.max_queue,
    )  # fmt: skip
    with listen(args.host, args.port) as sock:  # first: a busy port is said before the model loads
        model = load(args.model, device=args.device)
        if not _is_loopback(args.host):
            print(
                f"warning: serving on {args.host}: anyone who can reach this machine can use the model",
                file=sys.stderr,
            )
        host, port = sock.getsockname()[:2]  # port 0: the one the system chose
        shown = f"[{host}]" if ":" in host else host
        print(f"serving {args.model} on http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
        uvicorn.Server(uvicorn.Config(create_app(model, limits, name=str(args.model)))).run(sockets=[sock])
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (IPv6 if the host has a colon, as uvicorn binds), or a
    one-line error naming the address: in use, not this machine's, unknown."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except socket.gaierror as e:
        raise ValueError(f"cannot listen on {host}:{port}: unknown host ({e.strerror})") from None
    except OSError as e:
        if e.errno is not None and e.errno < 0:  # a getaddrinfo code: no such host or address
            raise ValueError(f"cannot listen on {host}:{port}: unknown host or invalid address") from None
        why = os.strerror(e.errno) if e.errno else str(e)  # create_server's message repeats the address
        raise ValueError(f"cannot listen on {host}:{port}: {why}") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
