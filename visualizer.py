"""Explore generators in the browser: a small web server that renders with the networks (GPU when present) and a
page any browser opens, also from a laptop through `ssh -L`."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import click
import torch

from viewer.networks import NetworkError, Networks

DEFAULT_PORT = 8765
PORTS_TO_TRY = 20  # Without --port, a busy default port moves on to the next free one of these.


def bind(host: str, port: int | None) -> socket.socket:
    """A listening socket on `port`, or without one on the first free port from DEFAULT_PORT (said so)."""
    candidates = [port] if port is not None else range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TO_TRY)
    for candidate in candidates:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, candidate))
        except OSError as error:
            sock.close()
            if error.errno == errno.EADDRINUSE and port is None:
                continue
            if error.errno == errno.EADDRINUSE:
                raise click.ClickException(
                    f"--port={port}: the port is in use (another visualizer?); pick another or leave --port out"
                ) from None
            raise click.ClickException(f"--host={host} --port={candidate}: cannot listen there ({error})") from None
        sock.listen(128)
        if port is None and candidate != DEFAULT_PORT:
            click.echo(f"Port {DEFAULT_PORT} is in use; using {candidate}.")
        return sock
    raise click.ClickException(f"ports {DEFAULT_PORT}-{DEFAULT_PORT + PORTS_TO_TRY - 1} are all in use; pass --port")


@click.command(context_settings=dict(terminal_width=120, max_content_width=120))
@click.argument("networks", metavar="[PKL|URL|RUN_DIR]...", nargs=-1)
@click.option("--host", metavar="ADDR", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", metavar="INT", type=click.IntRange(1, 65535), help=f"Port  [default: {DEFAULT_PORT} or next free]"
)
@click.option("--browse-dir", metavar="DIR", type=click.Path(file_okay=False, exists=True), help="Folder to browse.")
@click.option(
    "--capture-dir", metavar="DIR", default="captures", show_default=True, help="Where Save PNG writes its files."
)
@click.option("--device", "device_name", metavar="DEVICE", help="Torch device  [default: cuda if available]")
@click.option("--token", metavar="TEXT", help="Access token  [default: a random one, printed in the URL]")
def main(
    networks: tuple[str, ...],
    host: str,
    port: int | None,
    browse_dir: str | None,
    capture_dir: str,
    device_name: str | None,
    token: str | None,
) -> None:
    """Open the visualizer: prints the URL to open in a browser (it carries the access token).

    Examples:

    \b
    # A run directory means its newest snapshot.
    python visualizer.py runs/00000-stylegan2-shapes-32-gpus1-batch16-gamma0.05
    \b
    # On a GPU server, browsing its runs; then from a laptop: ssh -L 8765:127.0.0.1:8765 SERVER
    python visualizer.py --browse-dir=runs
    """
    from aiohttp import web  # The [viewer] extra; its absence is one sentence below.

    from viewer.server import ViewerConfig, make_app

    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = ViewerConfig(
        device=device, browse_dir=Path(browse_dir) if browse_dir else None, capture_dir=Path(capture_dir)
    )
    if token:
        config.token = token
    opened = Networks(device)
    for value in reversed(networks):  # The first given ends up newest: the page opens it.
        try:
            opened.open(value)
        except NetworkError as error:
            raise click.ClickException(str(error)) from None
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    shown_host = "127.0.0.1" if host in ("127.0.0.1", "localhost", "0.0.0.0", "::") else host
    click.echo(f"Visualizer on {device}: open http://{shown_host}:{bound_port}/?token={config.token}")
    click.echo(f"From another machine: ssh -L {bound_port}:127.0.0.1:{bound_port} THIS_MACHINE, then the URL above.")
    web.run_app(make_app(config, opened), sock=sock, print=None)


def cli() -> None:
    """Entry point of `ganforge-visualizer`: a clear sentence when the [viewer] extra is missing."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise SystemExit('visualizer.py needs aiohttp: pip install -e ".[viewer]"') from None
    main()


if __name__ == "__main__":
    cli()
