"""Offline guard: notebooks and tests may not reach the network.

``install()`` patches :mod:`socket` so that any connection or name lookup to a host
other than loopback raises :class:`NetworkBlockedError` with a clear message. The
runner installs it in every notebook kernel through an IPython startup file; the
test suite installs it in conftest.py. Loopback stays open because Jupyter kernels
talk to the runner over it.
"""

from __future__ import annotations

import socket

_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}
_original: dict = {}


class NetworkBlockedError(ConnectionError):
    pass


def _host_of(address) -> object:
    if isinstance(address, tuple) and address:
        return address[0]
    return None  # AF_UNIX paths and the like are local


def _check(host, what: str) -> None:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in _LOOPBACK or (isinstance(host, str) and host.startswith("127.")):
        return
    raise NetworkBlockedError(
        f"network access blocked ({what} {host!r}): this repository runs offline; data and weights "
        "must be procedural, shipped in a package or committed (see CONTRIBUTING.md)"
    )


def install() -> None:
    """Block non-loopback network access in this process (idempotent)."""
    if _original:
        return
    _original["connect"] = socket.socket.connect
    _original["connect_ex"] = socket.socket.connect_ex
    _original["getaddrinfo"] = socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(_host_of(address), "connect to")
        return _original["connect"](self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(_host_of(address), "connect to")
        return _original["connect_ex"](self, address)

    def getaddrinfo(host, *args, **kwargs):
        _check(host, "name lookup of")
        return _original["getaddrinfo"](host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo


def uninstall() -> None:
    if not _original:
        return
    socket.socket.connect = _original.pop("connect")
    socket.socket.connect_ex = _original.pop("connect_ex")
    socket.getaddrinfo = _original.pop("getaddrinfo")


STARTUP_SOURCE = "from common.harness.netguard import install as _install\n_install()\ndel _install\n"
