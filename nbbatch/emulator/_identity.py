"""How a background emulator proves it holds its home's key, without the key being sent.

Shared by the client side (:mod:`._background`, which asks before it sends the key) and
the server (:mod:`._server`, which answers): a module of its own, so the server never
imports the module that starts it.
"""

from __future__ import annotations

import hashlib
import hmac

#: The route that proves an emulator holds its home's key without the key being sent.
IDENTIFY_PATH = "/nbbatch/identify"


def identity_proof(token: str, pid: int, port: int, nonce: str) -> str:
    """What an emulator holding ``token`` answers to the identity challenge ``nonce``:
    an HMAC bound to its pid and port, so an answer relayed from another port is wrong."""
    message = f"nbbatch-emulator|{pid}|{port}|{nonce}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()
