"""Noise Protocol Framework (revision 34), limited to the two protocols petcamd speaks.

Pairing uses ``Noise_IKpsk2_25519_AESGCM_SHA256`` (the viewer knows the device key from the QR code
and the psk proves it saw the display); sessions use ``Noise_IK_25519_AESGCM_SHA256``. The objects
follow the specification's CipherState / SymmetricState / HandshakeState so the code can be checked
against it line by line; nothing else (other patterns, ciphers, rekeying) is implemented, which keeps
the attack surface to what the daemon and its viewers actually use.

Errors: anything caused by the peer's bytes or by the protocol's limits raises :class:`NoiseError`,
whose messages never contain key material. Bad arguments raise ``ValueError`` and calls out of turn
raise ``RuntimeError``, so programming mistakes are not mistaken for a hostile peer.
"""

from __future__ import annotations

import enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "DH_LEN",
    "HASH_LEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "MAX_PLAINTEXT_LEN",
    "PSK_LEN",
    "TAG_LEN",
    "CipherState",
    "HandshakeState",
    "NoiseError",
    "Pattern",
    "SymmetricState",
    "Transport",
    "public_bytes",
]

MAX_MESSAGE_LEN = 65535
DH_LEN = 32
HASH_LEN = 32
KEY_LEN = 32
TAG_LEN = 16
PSK_LEN = 32
MAX_PLAINTEXT_LEN = MAX_MESSAGE_LEN - TAG_LEN
# 2^64-1 is reserved by the specification; reaching it means the key must not be used again.
MAX_NONCE = 2**64 - 1


class NoiseError(Exception):
    """A handshake or transport message was rejected, or a protocol limit was reached."""


class _Token(enum.Enum):
    E = "e"
    S = "s"
    EE = "ee"
    ES = "es"
    SE = "se"
    SS = "ss"
    PSK = "psk"


_IK_MESSAGES: tuple[tuple[_Token, ...], ...] = (
    (_Token.E, _Token.ES, _Token.S, _Token.SS),
    (_Token.E, _Token.EE, _Token.SE),
)


class Pattern(enum.Enum):
    """The two supported protocols; the value is the full Noise protocol name."""

    IK = "Noise_IK_25519_AESGCM_SHA256"
    IK_PSK2 = "Noise_IKpsk2_25519_AESGCM_SHA256"

    @property
    def protocol_name(self) -> bytes:
        return self.value.encode("ascii")

    @property
    def uses_psk(self) -> bool:
        return self is Pattern.IK_PSK2

    @property
    def messages(self) -> tuple[tuple[_Token, ...], ...]:
        """Message patterns; both start from the pre-message ``<- s`` (the responder's key)."""
        if self is Pattern.IK:
            return _IK_MESSAGES
        first, second = _IK_MESSAGES
        return (first, (*second, _Token.PSK))


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """Raw 32-byte public key (``public_bytes_raw`` only exists from cryptography 40)."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _load_public(data: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(data)
    except ValueError:
        raise NoiseError("invalid public key") from None


def _dh(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError:
        # A low-order point gives an all-zero secret, which cryptography refuses.
        raise NoiseError("key agreement failed") from None


def _hash(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _hmac(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def _hkdf(chaining_key: bytes, input_key_material: bytes, outputs: int) -> tuple[bytes, ...]:
    """HKDF exactly as Noise §4.3 defines it (HMAC chain with ``ck`` as salt, empty info)."""
    temp_key = _hmac(chaining_key, input_key_material)
    results: list[bytes] = []
    previous = b""
    for counter in range(1, outputs + 1):
        previous = _hmac(temp_key, previous + bytes((counter,)))
        results.append(previous)
    return tuple(results)


class CipherState:
    """One AEAD key and its nonce counter (Noise §5.1)."""

    def __init__(self) -> None:
        self._aead: AESGCM | None = None
        self._nonce = 0

    def initialize_key(self, key: bytes | None) -> None:
        self._aead = None if key is None else AESGCM(key)
        self._nonce = 0

    def has_key(self) -> bool:
        return self._aead is not None

    def set_nonce(self, nonce: int) -> None:
        if not 0 <= nonce <= MAX_NONCE:
            raise ValueError("nonce out of range")
        self._nonce = nonce

    def _next_nonce(self) -> bytes:
        if self._nonce >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        # AESGCM nonce: 32 zero bits, then the counter big-endian (Noise §12.4).
        return b"\x00\x00\x00\x00" + self._nonce.to_bytes(8, "big")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        ciphertext = self._aead.encrypt(self._next_nonce(), plaintext, ad)
        self._nonce += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt; on failure the nonce stays where it was, as the specification requires."""
        if self._aead is None:
            return ciphertext
        nonce = self._next_nonce()
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, ad)
        except InvalidTag:
            raise NoiseError("decryption failed") from None
        self._nonce += 1
        return plaintext


class SymmetricState:
    """Chaining key and handshake hash shared by both ends during a handshake (Noise §5.2)."""

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_LEN:
            self._h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            self._h = _hash(protocol_name)
        self._ck = self._h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self._ck, temp_k = _hkdf(self._ck, input_key_material, 2)
        self.cipher.initialize_key(temp_k[:KEY_LEN])

    def mix_hash(self, data: bytes) -> None:
        self._h = _hash(self._h + data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        self._ck, temp_h, temp_k = _hkdf(self._ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k[:KEY_LEN])

    @property
    def handshake_hash(self) -> bytes:
        return self._h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = _hkdf(self._ck, b"", 2)
        first, second = CipherState(), CipherState()
        first.initialize_key(temp_k1[:KEY_LEN])
        second.initialize_key(temp_k2[:KEY_LEN])
        return first, second


class Transport:
    """Post-handshake channel: a separate key and nonce for each direction.

    A message that fails to decrypt leaves the receive nonce unchanged; on an ordered transport the
    caller should treat it as fatal and drop the channel.
    """

    __slots__ = ("_receive", "_send", "handshake_hash", "remote_static")

    def __init__(
        self, send: CipherState, receive: CipherState, handshake_hash: bytes, remote_static: bytes
    ) -> None:
        self._send = send
        self._receive = receive
        self.handshake_hash = handshake_hash
        self.remote_static = remote_static

    def encrypt(self, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT_LEN:
            raise NoiseError("message too large")
        return self._send.encrypt_with_ad(b"", plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise NoiseError("message too large")
        return self._receive.decrypt_with_ad(b"", ciphertext)


class HandshakeState:
    """One side of an IK or IKpsk2 handshake (Noise §5.3).

    Use :meth:`initiator` or :meth:`responder`. A responder learns the initiator's static key from
    message 1 (:attr:`remote_static`) and can check it, and supply the psk with :meth:`set_psk`,
    before writing message 2. Any rejected message makes the handshake unusable.
    """

    def __init__(
        self,
        pattern: Pattern,
        *,
        initiator: bool,
        static_private: X25519PrivateKey,
        remote_static_public: bytes | None,
        prologue: bytes,
        psk: bytes | None,
        ephemeral: X25519PrivateKey | None,
    ) -> None:
        self._pattern = pattern
        self._initiator = initiator
        self._s = static_private
        self._e = ephemeral
        self._rs: X25519PublicKey | None = None
        self._re: X25519PublicKey | None = None
        self._psk: bytes | None = None
        self._symmetric: SymmetricState | None = SymmetricState(pattern.protocol_name)
        self._symmetric.mix_hash(prologue)
        if initiator:
            if remote_static_public is None or len(remote_static_public) != DH_LEN:
                raise ValueError("the initiator needs the responder's 32-byte public key")
            self._rs = X25519PublicKey.from_public_bytes(remote_static_public)
            self._symmetric.mix_hash(remote_static_public)
        else:
            self._symmetric.mix_hash(public_bytes(static_private))
        self._message_index = 0
        self._failed = False
        self._transport: Transport | None = None
        if psk is not None:
            self.set_psk(psk)

    @classmethod
    def initiator(
        cls,
        pattern: Pattern,
        static_private: X25519PrivateKey,
        remote_static_public: bytes,
        *,
        prologue: bytes = b"",
        psk: bytes | None = None,
        ephemeral: X25519PrivateKey | None = None,
    ) -> HandshakeState:
        """Start a handshake with a responder whose static key is already known.

        ``ephemeral`` exists only to reproduce test vectors; leave it ``None``.
        """
        return cls(
            pattern,
            initiator=True,
            static_private=static_private,
            remote_static_public=remote_static_public,
            prologue=prologue,
            psk=psk,
            ephemeral=ephemeral,
        )

    @classmethod
    def responder(
        cls,
        pattern: Pattern,
        static_private: X25519PrivateKey,
        *,
        prologue: bytes = b"",
        psk: bytes | None = None,
        ephemeral: X25519PrivateKey | None = None,
    ) -> HandshakeState:
        """Wait for an initiator; for IKpsk2 the psk may instead be set after message 1."""
        return cls(
            pattern,
            initiator=False,
            static_private=static_private,
            remote_static_public=None,
            prologue=prologue,
            psk=psk,
            ephemeral=ephemeral,
        )

    def set_psk(self, psk: bytes) -> None:
        """Supply the pre-shared key; allowed until the message carrying the psk token is processed."""
        if not self._pattern.uses_psk:
            raise ValueError("this pattern takes no pre-shared key")
        if len(psk) != PSK_LEN:
            raise ValueError("the pre-shared key must be 32 bytes")
        if self._transport is not None:
            raise RuntimeError("handshake already complete")
        self._psk = bytes(psk)

    @property
    def pattern(self) -> Pattern:
        return self._pattern

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def complete(self) -> bool:
        return self._transport is not None

    @property
    def handshake_hash(self) -> bytes:
        """Channel-binding value: final only once :attr:`complete` is true."""
        if self._transport is not None:
            return self._transport.handshake_hash
        return self._state().handshake_hash

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known (for a responder: after message 1)."""
        return None if self._rs is None else public_bytes(self._rs)

    @property
    def is_my_turn(self) -> bool:
        return not self.complete and (self._message_index % 2 == 0) == self._initiator

    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("handshake not complete")
        return self._transport

    def write_message(self, payload: bytes) -> bytes:
        tokens = self._begin(writing=True)
        if len(payload) > MAX_MESSAGE_LEN - self._overhead(tokens):
            raise NoiseError("message too large")
        try:
            return self._write(tokens, payload)
        except Exception:
            self._failed = True
            raise

    def read_message(self, message: bytes) -> bytes:
        tokens = self._begin(writing=False)
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError("message too large")
        try:
            return self._read(tokens, message)
        except Exception:
            self._failed = True
            raise

    def _state(self) -> SymmetricState:
        if self._symmetric is None:
            raise RuntimeError("handshake already complete")
        return self._symmetric

    def _begin(self, *, writing: bool) -> tuple[_Token, ...]:
        if self._failed:
            raise NoiseError("handshake failed earlier")
        if self.complete:
            raise RuntimeError("handshake already complete")
        if self.is_my_turn != writing:
            raise RuntimeError("not this side's turn to " + ("write" if writing else "read"))
        tokens = self._pattern.messages[self._message_index]
        if _Token.PSK in tokens and self._psk is None:
            raise RuntimeError("pre-shared key not set")
        return tokens

    def _overhead(self, tokens: tuple[_Token, ...]) -> int:
        """Bytes this message adds to its payload, so oversize is refused before any state changes."""
        keyed = self._state().cipher.has_key()
        size = 0
        for token in tokens:
            if token is _Token.E:
                size += DH_LEN
                keyed = keyed or self._pattern.uses_psk
            elif token is _Token.S:
                size += DH_LEN + (TAG_LEN if keyed else 0)
            else:
                keyed = True
        return size + (TAG_LEN if keyed else 0)

    def _write(self, tokens: tuple[_Token, ...], payload: bytes) -> bytes:
        state = self._state()
        out: list[bytes] = []
        for token in tokens:
            if token is _Token.E:
                if self._e is None:
                    self._e = X25519PrivateKey.generate()
                e_public = public_bytes(self._e)
                out.append(e_public)
                self._mix_ephemeral(state, e_public)
            elif token is _Token.S:
                out.append(state.encrypt_and_hash(public_bytes(self._s)))
            else:
                self._mix_token(state, token)
        out.append(state.encrypt_and_hash(payload))
        self._advance()
        return b"".join(out)

    def _read(self, tokens: tuple[_Token, ...], message: bytes) -> bytes:
        state = self._state()
        view = memoryview(message)
        for token in tokens:
            if token is _Token.E:
                e_public, view = self._take(view, DH_LEN)
                self._re = _load_public(e_public)
                self._mix_ephemeral(state, e_public)
            elif token is _Token.S:
                size = DH_LEN + (TAG_LEN if state.cipher.has_key() else 0)
                s_encrypted, view = self._take(view, size)
                self._rs = _load_public(state.decrypt_and_hash(s_encrypted))
            else:
                self._mix_token(state, token)
        if state.cipher.has_key() and len(view) < TAG_LEN:
            raise NoiseError("message too short")
        payload = state.decrypt_and_hash(bytes(view))
        self._advance()
        return payload

    @staticmethod
    def _take(view: memoryview, size: int) -> tuple[bytes, memoryview]:
        if len(view) < size:
            raise NoiseError("message too short")
        return bytes(view[:size]), view[size:]

    def _mix_ephemeral(self, state: SymmetricState, e_public: bytes) -> None:
        state.mix_hash(e_public)
        if self._pattern.uses_psk:
            state.mix_key(e_public)

    def _mix_token(self, state: SymmetricState, token: _Token) -> None:
        if token is _Token.PSK:
            if self._psk is None:
                raise RuntimeError("pre-shared key not set")
            state.mix_key_and_hash(self._psk)
            return
        # Each token names (initiator's key, responder's key); map it to (mine, theirs).
        local_is_first = self._initiator
        if token is _Token.EE:
            mine, theirs = self._e, self._re
        elif token is _Token.SS:
            mine, theirs = self._s, self._rs
        elif token is _Token.ES:
            mine, theirs = (self._e, self._rs) if local_is_first else (self._s, self._re)
        else:  # _Token.SE
            mine, theirs = (self._s, self._re) if local_is_first else (self._e, self._rs)
        if mine is None or theirs is None:
            raise RuntimeError("key missing for " + token.value)
        state.mix_key(_dh(mine, theirs))

    def _advance(self) -> None:
        self._message_index += 1
        if self._message_index < len(self._pattern.messages):
            return
        state = self._state()
        first, second = state.split()
        send, receive = (first, second) if self._initiator else (second, first)
        if self._rs is None:
            raise RuntimeError("handshake ended without the peer's static key")
        self._transport = Transport(send, receive, state.handshake_hash, public_bytes(self._rs))
        self._symmetric = None
        self._e = None
        self._re = None
        self._psk = None
