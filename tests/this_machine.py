"""An address of this machine that nbbatch takes for a remote one (not loopback), for
tests that play a proxy or a provider reached over the network."""

from __future__ import annotations

import functools
import socket

import pytest

from nbbatch.providers.credentials import is_loopback


@functools.cache
def remote_host() -> str | None:
    """This machine's own non-loopback IPv4 address (where a server can listen), or None.

    The address the system would send from towards a private network, found without
    sending anything (a UDP socket only picks its route when connected)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            host = str(probe.getsockname()[0])
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return None
    return None if is_loopback(f"http://{host}") else host


#: Skips a test on a machine with no non-loopback address.
needs_remote_host = pytest.mark.skipif(
    remote_host() is None, reason="this machine has no non-loopback address to listen on"
)
