// Noise Protocol Framework (revision 34), limited to the two protocols petcamd speaks:
// Noise_IKpsk2_25519_AESGCM_SHA256 (pairing) and Noise_IK_25519_AESGCM_SHA256 (sessions).
//
// This mirrors petcamd/secure/noise.py object for object (CipherState, SymmetricState,
// HandshakeState, Transport) so the two can be read side by side and against the specification.
// The primitives are the vendored @noble libraries, never crypto.subtle: the viewer is also served
// from plain-http LAN origins, where crypto.subtle does not exist, and one code path everywhere is
// easier to trust than two.
//
// Errors: anything caused by the peer's bytes or by a protocol limit throws NoiseError, whose
// message never contains key material. Bad arguments throw TypeError/RangeError and calls out of
// turn throw Error, so that programming mistakes are not mistaken for a hostile peer.
//
// Keys are Uint8Arrays: a private key is the raw 32-byte X25519 scalar, a public key 32 bytes.

import { gcm } from '../vendor/noble-ciphers/aes.js';
import { x25519 } from '../vendor/noble-curves/ed25519.js';
import { hkdf } from '../vendor/noble-hashes/hkdf.js';
import { sha256 } from '../vendor/noble-hashes/sha2.js';
import { concatBytes, randomBytes } from './bytes.js';

export const MAX_MESSAGE_LEN = 65535;
export const DH_LEN = 32;
export const HASH_LEN = 32;
export const KEY_LEN = 32;
export const TAG_LEN = 16;
export const PSK_LEN = 32;
export const MAX_PLAINTEXT_LEN = MAX_MESSAGE_LEN - TAG_LEN;
// 2^64-1 is reserved by the specification; reaching it means the key must not be used again.
export const MAX_NONCE = 2n ** 64n - 1n;

const EMPTY = new Uint8Array(0);

/** A handshake or transport message was rejected, or a protocol limit was reached. */
export class NoiseError extends Error {
  constructor(message) {
    super(message);
    this.name = 'NoiseError';
  }
}

// Message patterns after the pre-message "<- s" (the responder's static key, known in advance).
const IK_MESSAGES = [
  ['e', 'es', 's', 'ss'],
  ['e', 'ee', 'se'],
];

/** The two supported protocols. */
export const Pattern = Object.freeze({
  IK: Object.freeze({ name: 'Noise_IK_25519_AESGCM_SHA256', usesPsk: false, messages: IK_MESSAGES }),
  IK_PSK2: Object.freeze({
    name: 'Noise_IKpsk2_25519_AESGCM_SHA256',
    usesPsk: true,
    messages: [IK_MESSAGES[0], [...IK_MESSAGES[1], 'psk']],
  }),
});

function checkKey(key, what) {
  if (!(key instanceof Uint8Array) || key.length !== DH_LEN) {
    throw new TypeError(`${what} must be a 32-byte Uint8Array`);
  }
}

/** The 32-byte public key of a raw X25519 private key. */
export function publicKey(privateKey) {
  checkKey(privateKey, 'the private key');
  return x25519.getPublicKey(privateKey);
}

/** A new random X25519 private key (any 32 bytes are a valid scalar: X25519 clamps them). */
export const generatePrivateKey = () => randomBytes(DH_LEN);

function dh(privateKey, publicKeyBytes) {
  try {
    return x25519.getSharedSecret(privateKey, publicKeyBytes);
  } catch {
    // noble refuses low-order points (an all-zero shared secret), as cryptography does.
    throw new NoiseError('key agreement failed');
  }
}

const hash = (data) => sha256(data);

/** HKDF exactly as Noise §4.3 defines it: RFC 5869 with `ck` as salt and empty info. */
function noiseHkdf(chainingKey, inputKeyMaterial, outputs) {
  const okm = hkdf(sha256, inputKeyMaterial, chainingKey, EMPTY, outputs * HASH_LEN);
  return Array.from({ length: outputs }, (_, i) => okm.slice(i * HASH_LEN, (i + 1) * HASH_LEN));
}

/** One AEAD key and its nonce counter (Noise §5.1). */
export class CipherState {
  #key = null;
  #nonce = 0n;

  initializeKey(key) {
    this.#key = key === null ? null : Uint8Array.from(key);
    this.#nonce = 0n;
  }

  hasKey() {
    return this.#key !== null;
  }

  setNonce(nonce) {
    if (typeof nonce !== 'bigint' || nonce < 0n || nonce > MAX_NONCE) throw new RangeError('nonce out of range');
    this.#nonce = nonce;
  }

  #nextNonce() {
    if (this.#nonce >= MAX_NONCE) throw new NoiseError('nonce exhausted');
    // AESGCM nonce: 32 zero bits, then the counter big-endian (Noise §12.4).
    const nonce = new Uint8Array(12);
    new DataView(nonce.buffer).setBigUint64(4, this.#nonce, false);
    return nonce;
  }

  encryptWithAd(ad, plaintext) {
    if (this.#key === null) return Uint8Array.from(plaintext);
    const ciphertext = gcm(this.#key, this.#nextNonce(), ad).encrypt(plaintext);
    this.#nonce += 1n;
    return ciphertext;
  }

  /** Decrypts; on failure the nonce stays where it was, as the specification requires. */
  decryptWithAd(ad, ciphertext) {
    if (this.#key === null) return Uint8Array.from(ciphertext);
    const nonce = this.#nextNonce();
    let plaintext;
    try {
      plaintext = gcm(this.#key, nonce, ad).decrypt(ciphertext);
    } catch {
      throw new NoiseError('decryption failed');
    }
    this.#nonce += 1n;
    return plaintext;
  }
}

/** Chaining key and handshake hash shared by both ends during a handshake (Noise §5.2). */
export class SymmetricState {
  #h;
  #ck;

  constructor(protocolName) {
    const name = new TextEncoder().encode(protocolName);
    if (name.length <= HASH_LEN) {
      this.#h = new Uint8Array(HASH_LEN);
      this.#h.set(name);
    } else {
      this.#h = hash(name);
    }
    this.#ck = this.#h;
    this.cipher = new CipherState();
  }

  mixKey(inputKeyMaterial) {
    const [ck, tempK] = noiseHkdf(this.#ck, inputKeyMaterial, 2);
    this.#ck = ck;
    this.cipher.initializeKey(tempK.subarray(0, KEY_LEN));
  }

  mixHash(data) {
    this.#h = hash(concatBytes(this.#h, data));
  }

  mixKeyAndHash(inputKeyMaterial) {
    const [ck, tempH, tempK] = noiseHkdf(this.#ck, inputKeyMaterial, 3);
    this.#ck = ck;
    this.mixHash(tempH);
    this.cipher.initializeKey(tempK.subarray(0, KEY_LEN));
  }

  get handshakeHash() {
    return Uint8Array.from(this.#h);
  }

  encryptAndHash(plaintext) {
    const ciphertext = this.cipher.encryptWithAd(this.#h, plaintext);
    this.mixHash(ciphertext);
    return ciphertext;
  }

  decryptAndHash(ciphertext) {
    const plaintext = this.cipher.decryptWithAd(this.#h, ciphertext);
    this.mixHash(ciphertext);
    return plaintext;
  }

  split() {
    const [tempK1, tempK2] = noiseHkdf(this.#ck, EMPTY, 2);
    const first = new CipherState();
    const second = new CipherState();
    first.initializeKey(tempK1.subarray(0, KEY_LEN));
    second.initializeKey(tempK2.subarray(0, KEY_LEN));
    return [first, second];
  }
}

/**
 * Post-handshake channel: a separate key and nonce for each direction. A message that fails to
 * decrypt leaves the receive nonce unchanged; on an ordered transport (one WebSocket) the caller
 * treats it as fatal and drops the channel.
 */
export class Transport {
  #send;
  #receive;

  constructor(send, receive, handshakeHash, remoteStatic) {
    this.#send = send;
    this.#receive = receive;
    this.handshakeHash = handshakeHash;
    this.remoteStatic = remoteStatic;
    Object.freeze(this);
  }

  encrypt(plaintext) {
    if (plaintext.length > MAX_PLAINTEXT_LEN) throw new NoiseError('message too large');
    return this.#send.encryptWithAd(EMPTY, plaintext);
  }

  decrypt(ciphertext) {
    if (ciphertext.length > MAX_MESSAGE_LEN) throw new NoiseError('message too large');
    return this.#receive.decryptWithAd(EMPTY, ciphertext);
  }
}

/**
 * One side of an IK or IKpsk2 handshake (Noise §5.3). Use HandshakeState.initiator() or
 * HandshakeState.responder(). A responder learns the initiator's static key from message 1
 * (remoteStatic) and can check it, and supply the psk with setPsk(), before writing message 2.
 * Any rejected message makes the handshake unusable.
 */
export class HandshakeState {
  #pattern;
  #initiator;
  #s;
  #e;
  #rs = null;
  #re = null;
  #psk = null;
  #symmetric;
  #messageIndex = 0;
  #failed = false;
  #transport = null;

  /** Use initiator() or responder(). */
  constructor(pattern, { initiator, staticPrivate, remoteStaticPublic, prologue, psk, ephemeral }) {
    if (pattern !== Pattern.IK && pattern !== Pattern.IK_PSK2) throw new TypeError('unsupported pattern');
    checkKey(staticPrivate, 'the static private key');
    if (ephemeral != null) checkKey(ephemeral, 'the ephemeral private key');
    if (!(prologue instanceof Uint8Array)) throw new TypeError('the prologue must be a Uint8Array');
    this.#pattern = pattern;
    this.#initiator = initiator;
    this.#s = Uint8Array.from(staticPrivate);
    this.#e = ephemeral == null ? null : Uint8Array.from(ephemeral);
    this.#symmetric = new SymmetricState(pattern.name);
    this.#symmetric.mixHash(prologue);
    if (initiator) {
      if (!(remoteStaticPublic instanceof Uint8Array) || remoteStaticPublic.length !== DH_LEN) {
        throw new TypeError("the initiator needs the responder's 32-byte public key");
      }
      this.#rs = Uint8Array.from(remoteStaticPublic);
      this.#symmetric.mixHash(this.#rs);
    } else {
      this.#symmetric.mixHash(publicKey(this.#s));
    }
    if (psk != null) this.setPsk(psk);
  }

  /**
   * Starts a handshake with a responder whose static key is already known.
   * `ephemeral` exists only to reproduce test vectors and examples; leave it out.
   */
  static initiator(pattern, staticPrivate, remoteStaticPublic, { prologue = EMPTY, psk = null, ephemeral = null } = {}) {
    return new HandshakeState(pattern, { initiator: true, staticPrivate, remoteStaticPublic, prologue, psk, ephemeral });
  }

  /** Waits for an initiator; for IKpsk2 the psk may instead be set after message 1. */
  static responder(pattern, staticPrivate, { prologue = EMPTY, psk = null, ephemeral = null } = {}) {
    return new HandshakeState(pattern, {
      initiator: false,
      staticPrivate,
      remoteStaticPublic: null,
      prologue,
      psk,
      ephemeral,
    });
  }

  /** Supplies the pre-shared key; allowed until the message carrying the psk token is processed. */
  setPsk(psk) {
    if (!this.#pattern.usesPsk) throw new TypeError('this pattern takes no pre-shared key');
    if (!(psk instanceof Uint8Array) || psk.length !== PSK_LEN) {
      throw new TypeError('the pre-shared key must be a 32-byte Uint8Array');
    }
    if (this.#transport !== null) throw new Error('handshake already complete');
    this.#psk = Uint8Array.from(psk);
  }

  get pattern() {
    return this.#pattern;
  }

  get isInitiator() {
    return this.#initiator;
  }

  get complete() {
    return this.#transport !== null;
  }

  /** Channel-binding value: final only once `complete` is true. */
  get handshakeHash() {
    if (this.#transport !== null) return this.#transport.handshakeHash;
    return this.#state().handshakeHash;
  }

  /** The peer's static public key, once known (for a responder: after message 1). */
  get remoteStatic() {
    return this.#rs === null ? null : Uint8Array.from(this.#rs);
  }

  get isMyTurn() {
    return !this.complete && (this.#messageIndex % 2 === 0) === this.#initiator;
  }

  transport() {
    if (this.#transport === null) throw new Error('handshake not complete');
    return this.#transport;
  }

  writeMessage(payload = EMPTY) {
    const tokens = this.#begin(true);
    if (payload.length > MAX_MESSAGE_LEN - this.#overhead(tokens)) throw new NoiseError('message too large');
    try {
      return this.#write(tokens, payload);
    } catch (error) {
      this.#failed = true;
      throw error;
    }
  }

  readMessage(message) {
    const tokens = this.#begin(false);
    if (message.length > MAX_MESSAGE_LEN) throw new NoiseError('message too large');
    try {
      return this.#read(tokens, message);
    } catch (error) {
      this.#failed = true;
      throw error;
    }
  }

  #state() {
    if (this.#symmetric === null) throw new Error('handshake already complete');
    return this.#symmetric;
  }

  #begin(writing) {
    if (this.#failed) throw new NoiseError('handshake failed earlier');
    if (this.complete) throw new Error('handshake already complete');
    if (this.isMyTurn !== writing) throw new Error(`not this side's turn to ${writing ? 'write' : 'read'}`);
    const tokens = this.#pattern.messages[this.#messageIndex];
    if (tokens.includes('psk') && this.#psk === null) throw new Error('pre-shared key not set');
    return tokens;
  }

  /** Bytes this message adds to its payload, so oversize is refused before any state changes. */
  #overhead(tokens) {
    let keyed = this.#state().cipher.hasKey();
    let size = 0;
    for (const token of tokens) {
      if (token === 'e') {
        size += DH_LEN;
        keyed = keyed || this.#pattern.usesPsk;
      } else if (token === 's') {
        size += DH_LEN + (keyed ? TAG_LEN : 0);
      } else {
        keyed = true;
      }
    }
    return size + (keyed ? TAG_LEN : 0);
  }

  #write(tokens, payload) {
    const state = this.#state();
    const out = [];
    for (const token of tokens) {
      if (token === 'e') {
        if (this.#e === null) this.#e = generatePrivateKey();
        const ePublic = publicKey(this.#e);
        out.push(ePublic);
        this.#mixEphemeral(state, ePublic);
      } else if (token === 's') {
        out.push(state.encryptAndHash(publicKey(this.#s)));
      } else {
        this.#mixToken(state, token);
      }
    }
    out.push(state.encryptAndHash(payload));
    this.#advance();
    return concatBytes(...out);
  }

  #read(tokens, message) {
    const state = this.#state();
    let offset = 0;
    const take = (size) => {
      if (message.length - offset < size) throw new NoiseError('message too short');
      const part = message.slice(offset, offset + size);
      offset += size;
      return part;
    };
    for (const token of tokens) {
      if (token === 'e') {
        this.#re = take(DH_LEN);
        this.#mixEphemeral(state, this.#re);
      } else if (token === 's') {
        const size = DH_LEN + (state.cipher.hasKey() ? TAG_LEN : 0);
        this.#rs = state.decryptAndHash(take(size));
      } else {
        this.#mixToken(state, token);
      }
    }
    if (state.cipher.hasKey() && message.length - offset < TAG_LEN) throw new NoiseError('message too short');
    const payload = state.decryptAndHash(message.slice(offset));
    this.#advance();
    return payload;
  }

  #mixEphemeral(state, ePublic) {
    state.mixHash(ePublic);
    if (this.#pattern.usesPsk) state.mixKey(ePublic);
  }

  #mixToken(state, token) {
    if (token === 'psk') {
      if (this.#psk === null) throw new Error('pre-shared key not set');
      state.mixKeyAndHash(this.#psk);
      return;
    }
    // Each token names (initiator's key, responder's key); map it to (mine, theirs).
    const first = this.#initiator;
    let mine;
    let theirs;
    if (token === 'ee') [mine, theirs] = [this.#e, this.#re];
    else if (token === 'ss') [mine, theirs] = [this.#s, this.#rs];
    else if (token === 'es') [mine, theirs] = first ? [this.#e, this.#rs] : [this.#s, this.#re];
    else [mine, theirs] = first ? [this.#s, this.#re] : [this.#e, this.#rs]; // 'se'
    if (mine === null || theirs === null) throw new Error(`key missing for ${token}`);
    state.mixKey(dh(mine, theirs));
  }

  #advance() {
    this.#messageIndex += 1;
    if (this.#messageIndex < this.#pattern.messages.length) return;
    const state = this.#state();
    const [first, second] = state.split();
    const [send, receive] = this.#initiator ? [first, second] : [second, first];
    if (this.#rs === null) throw new Error("handshake ended without the peer's static key");
    this.#transport = new Transport(send, receive, state.handshakeHash, Uint8Array.from(this.#rs));
    // Forget what only the handshake needed.
    this.#symmetric = null;
    this.#e?.fill(0);
    this.#e = null;
    this.#re = null;
    this.#psk?.fill(0);
    this.#psk = null;
  }
}
