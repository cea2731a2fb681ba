"""The tests' network guard, in the test session and in every Python process it starts.

tests/conftest.py puts this folder first on PYTHONPATH and sets VITPLAS_TEST_NO_NETWORK=1, so
Python imports this file at start-up in the test process's children too (CLI subprocesses,
sweep workers). With the variable set, any connection, datagram or DNS lookup of a host that is
not this machine raises RuntimeError naming it. The sitecustomize this file shadows (if any)
still runs.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

ENV = "VITPLAS_TEST_NO_NETWORK"
_REAL = {
    "connect": socket.socket.connect,
    "connect_ex": socket.socket.connect_ex,
    "sendto": socket.socket.sendto,
    "sendmsg": socket.socket.sendmsg,
    "getaddrinfo": socket.getaddrinfo,
    "gethostbyname": socket.gethostbyname,
    "gethostbyname_ex": socket.gethostbyname_ex,
}


def is_local(address: object) -> bool:
    """True for loopback addresses, localhost and this machine's own name (a host, or a
    (host, port, ...) address of an AF_INET/AF_INET6 socket)."""
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in (None, "", "localhost", socket.gethostname()) or str(host).endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str, target: object) -> None:
    raise RuntimeError(f"tests must not reach the network (tried to {what} {target!r})")


def install() -> None:
    def connect(self, address):
        if self.family != socket.AF_UNIX and not is_local(address):
            _refuse("connect to", address)
        return _REAL["connect"](self, address)

    def connect_ex(self, address):
        if self.family != socket.AF_UNIX and not is_local(address):
            _refuse("connect to", address)
        return _REAL["connect_ex"](self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if self.family != socket.AF_UNIX and not is_local(address):
            _refuse("send a datagram to", address)
        return _REAL["sendto"](self, data, *args)

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):
        if address is not None and self.family != socket.AF_UNIX and not is_local(address):
            _refuse("send a message to", address)
        extra = () if address is None else (address,)
        return _REAL["sendmsg"](self, buffers, ancdata, flags, *extra)

    def resolver(name):
        def lookup(host, *args, **kwargs):
            if not is_local(host):
                _refuse("look up", host)
            return _REAL[name](host, *args, **kwargs)

        return lookup

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.socket.sendto, socket.socket.sendmsg = sendto, sendmsg
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        setattr(socket, name, resolver(name))


def uninstall() -> None:
    for name in ("connect", "connect_ex", "sendto", "sendmsg"):
        setattr(socket.socket, name, _REAL[name])
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        setattr(socket, name, _REAL[name])


def _chain_shadowed() -> None:
    """Run the sitecustomize.py that this one shadows on sys.path (e.g. the system's)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(entry or ".")
        path = os.path.join(folder, "sitecustomize.py")
        if folder != here and os.path.isfile(path):
            with open(path) as handle:
                exec(compile(handle.read(), path, "exec"), {"__name__": "_shadowed_sitecustomize"})
            return


if __name__ == "sitecustomize":
    if os.environ.get(ENV):
        install()
    _chain_shadowed()
