"""``encrypted_content``: reasoning sealed so that only this gateway can read it back.

Authenticated encryption from the standard library (encrypt-then-MAC): the keystream is
SHAKE-256 over a derived key and a random nonce, the tag HMAC-SHA-256 over the version, the nonce
and the ciphertext. A client sees an opaque token; a token changed by one bit, or sealed under
another key (another gateway, or this one before a restart without a configured key), is
refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

_VERSION = b"glmgw1"
_PREFIX = _VERSION.decode() + "."
_NONCE = 16
_TAG = 32


class SealError(Exception):
    pass


class Sealer:
    def __init__(self, key: bytes | str | None = None) -> None:
        if key is None:
            material = secrets.token_bytes(32)
        elif isinstance(key, str):
            material = key.encode()
        else:
            material = key
        self._enc = hmac.digest(material, b"glm-gateway responses encryption", "sha256")
        self._mac = hmac.digest(material, b"glm-gateway responses authentication", "sha256")

    def _keystream(self, nonce: bytes, n: int) -> bytes:
        return hashlib.shake_256(self._enc + nonce).digest(n)

    def seal(self, text: str) -> str:
        plain = text.encode()
        nonce = secrets.token_bytes(_NONCE)
        stream = self._keystream(nonce, len(plain))
        cipher = bytes(a ^ b for a, b in zip(plain, stream, strict=True))
        tag = hmac.digest(self._mac, _VERSION + nonce + cipher, "sha256")
        return _PREFIX + base64.urlsafe_b64encode(nonce + cipher + tag).decode().rstrip("=")

    def open(self, token: str) -> str:
        if not token.startswith(_PREFIX):
            raise SealError("it was not produced by this gateway")
        body = token[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise SealError("it is not valid base64") from None
        if len(raw) < _NONCE + _TAG:
            raise SealError("it is too short")
        nonce, cipher, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
        expected = hmac.digest(self._mac, _VERSION + nonce + cipher, "sha256")
        if not hmac.compare_digest(tag, expected):
            raise SealError(
                "it was altered, or sealed under another key (another gateway, or this one "
                "before a restart without a configured responses.encryption_key)"
            )
        stream = self._keystream(nonce, len(cipher))
        try:
            return bytes(a ^ b for a, b in zip(cipher, stream, strict=True)).decode()
        except UnicodeDecodeError:
            raise SealError("it does not decode") from None
