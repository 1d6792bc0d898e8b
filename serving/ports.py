"""Port probing: one clear line naming the option when an address cannot be listened on.

grpc logs a core error to stderr and says less, and the workers of ``serve --workers`` share their port
(SO_REUSEPORT), so none of them would notice another program on it: the CLI and the supervisor probe first.
"""
from __future__ import annotations

import errno
import socket

from .errors import PortUnavailable


def in_use(e: OSError) -> str:
    """The reason an ``OSError`` from bind gives, in words."""
    return "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))


def check_port(host: str, port: int, option: str) -> None:
    """Raise ``PortUnavailable`` naming ``option`` when ``host:port`` cannot be listened on (bound the way
    grpc binds: SO_REUSEADDR, so sockets in TIME_WAIT do not count). Port 0 always can."""
    if not port:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PortUnavailable(f"{option} {port}: cannot resolve host {host!r} ({e.strerror})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as e:
                raise PortUnavailable(f"{option} {port}: cannot listen on {host}:{port} ({in_use(e)})") from None


def pick_port(host: str, option: str = "--port") -> int:
    """A free port on ``host`` (for ``--port 0`` shared by several workers, which must agree on one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as s:
            s.bind(address)
            return s.getsockname()[1]
    except OSError as e:
        raise PortUnavailable(f"{option} 0: cannot listen on {host} ({e.strerror or e})") from None
