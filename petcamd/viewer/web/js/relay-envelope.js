// The relay's envelope format (docs/relay.md, petcamd/protocol/relay.py), the viewer's side of it.
//
// On `wss://<relay>/viewer` every WebSocket binary message is one envelope: a type byte and a body
// of an exact length. A viewer sends CONNECT (open a session with a device, under a connection id
// it picks), DATA (one petcamd frame of that session) and CLOSE; it receives DATA and CLOSE. The
// frame inside DATA is the same frame the LAN server carries, so the ViewerChannel is unchanged.
//
// Decoding is strict, as in Python: unknown types, wrong lengths and connection id 0 throw
// EnvelopeError, whose message never quotes the bytes received.

import { MAX_FRAME_LEN } from './messages.js';

export const CONN_ID_LEN = 4;
export const DEVICE_ID_LEN = 16;
export const KEY_LEN = 32;
export const NONCE_LEN = 32;
export const MAX_CONN_ID = 0xffffffff;
export const MAX_ORIGIN_LEN = 255;
export const DATA_HEADER_LEN = 1 + CONN_ID_LEN;
/** Largest envelope: a DATA carrying the largest frame. */
export const MAX_ENVELOPE_LEN = DATA_HEADER_LEN + MAX_FRAME_LEN;

/** The first byte of an envelope; never one of the petcamd frame types (0x01-0x05). */
export const EnvelopeType = Object.freeze({
  CHALLENGE: 0x10, // relay to device
  REGISTER: 0x11, // device to relay
  REGISTERED: 0x12, // relay to device
  CONNECT: 0x20, // viewer to relay: connection id, device id
  OPEN: 0x21, // relay to device
  DATA: 0x30, // both ways: connection id, one frame
  CLOSE: 0x31, // both ways: connection id, reason
  ICE_SERVERS: 0x40, // relay to device or viewer: STUN/TURN servers with short-lived credentials
});

const MAX_ICE_SERVERS = 8;
const MAX_ICE_TEXT = 512;

/** Why a session ended, in CLOSE. Receivers map numbers they do not know to UNKNOWN. */
export const CloseReason = Object.freeze({
  CLOSED: 0,
  DEVICE_UNAVAILABLE: 1,
  TOO_MANY_VIEWERS: 2,
  TOO_MANY_SESSIONS: 3,
  OVERLOADED: 4,
  UNKNOWN: 0xffff,
});

const REASONS = new Set(Object.values(CloseReason));

/** A CLOSE reason from the network: known numbers stay, anything else becomes UNKNOWN. */
export const closeReasonFromWire = (value) => (REASONS.has(value) ? value : CloseReason.UNKNOWN);

/** WebSocket close codes the relay ends a whole connection with. */
export const RelayCloseCode = Object.freeze({
  GOING_AWAY: 1001, // the relay shuts down: reconnect with backoff
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  BAD_ENVELOPE: 4000,
  REGISTRATION_REFUSED: 4001,
  REGISTRATION_TIMEOUT: 4002,
  REPLACED: 4003,
  IDLE_TIMEOUT: 4004,
  RATE_LIMITED: 4029,
});

const DEVICE_ID = /^[a-z2-7]{16}$/;

/** A malformed envelope; the message never quotes the peer's bytes. */
export class EnvelopeError extends Error {
  constructor(message) {
    super(message);
    this.name = 'EnvelopeError';
  }
}

function checkConnId(connId) {
  if (!Number.isInteger(connId) || connId < 1 || connId > MAX_CONN_ID) {
    throw new EnvelopeError('connection id must be 1 to 2^32-1');
  }
}

function checkDeviceId(deviceId) {
  if (typeof deviceId !== 'string' || !DEVICE_ID.test(deviceId)) {
    throw new EnvelopeError('device id must be 16 lowercase base32 characters');
  }
}

function header(type, connId, bodyLength) {
  const out = new Uint8Array(DATA_HEADER_LEN + bodyLength);
  out[0] = type;
  new DataView(out.buffer).setUint32(1, connId);
  return out;
}

const readConnId = (data) => new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(1);

/** CONNECT: open a session with `deviceId` under `connId` (the viewer's own number for it). */
export function encodeConnect(connId, deviceId) {
  checkConnId(connId);
  checkDeviceId(deviceId);
  const out = header(EnvelopeType.CONNECT, connId, DEVICE_ID_LEN);
  for (let i = 0; i < DEVICE_ID_LEN; i++) out[DATA_HEADER_LEN + i] = deviceId.charCodeAt(i);
  return out;
}

/** DATA: one petcamd frame (1 to 65535 bytes) of session `connId`. */
export function encodeData(connId, frame) {
  checkConnId(connId);
  if (!(frame instanceof Uint8Array) || frame.length < 1 || frame.length > MAX_FRAME_LEN) {
    throw new EnvelopeError(`DATA frame must be 1 to ${MAX_FRAME_LEN} bytes`);
  }
  const out = header(EnvelopeType.DATA, connId, frame.length);
  out.set(frame, DATA_HEADER_LEN);
  return out;
}

/** CLOSE: this end is done with session `connId`. Clients always send reason CLOSED. */
export function encodeClose(connId, reason = CloseReason.CLOSED) {
  checkConnId(connId);
  if (!Number.isInteger(reason) || reason < 0 || reason > 0xffff) throw new EnvelopeError('reason out of range');
  const out = header(EnvelopeType.CLOSE, connId, 2);
  new DataView(out.buffer).setUint16(DATA_HEADER_LEN, reason);
  return out;
}

function exactly(data, length, name) {
  if (data.length !== length) throw new EnvelopeError(`${name} body must be ${length - 1} bytes`);
}

/**
 * One received envelope as a frozen object: {type: 'data', connId, frame}, {type: 'close', connId,
 * reason}, {type: 'open', connId}, {type: 'connect', connId, deviceId}, {type: 'registered',
 * deviceId}, {type: 'challenge', nonce, relayKey, origin}, {type: 'register', deviceKey, proof} or
 * {type: 'ice-servers', servers, expiresAt}.
 * Throws EnvelopeError for anything malformed. A viewer acts only on 'data' and 'close'.
 */
export function decodeEnvelope(data) {
  if (data instanceof ArrayBuffer) data = new Uint8Array(data);
  if (!(data instanceof Uint8Array)) throw new EnvelopeError('not a binary envelope');
  if (data.length === 0) throw new EnvelopeError('empty envelope');
  if (data.length > MAX_ENVELOPE_LEN) throw new EnvelopeError(`envelope larger than ${MAX_ENVELOPE_LEN} bytes`);
  const type = data[0];
  switch (type) {
    case EnvelopeType.DATA: {
      if (data.length <= DATA_HEADER_LEN) throw new EnvelopeError('DATA without a frame');
      const connId = readConnId(data);
      checkConnId(connId);
      return Object.freeze({ type: 'data', connId, frame: data.slice(DATA_HEADER_LEN) });
    }
    case EnvelopeType.CLOSE: {
      exactly(data, DATA_HEADER_LEN + 2, 'CLOSE');
      const connId = readConnId(data);
      checkConnId(connId);
      const reason = closeReasonFromWire((data[DATA_HEADER_LEN] << 8) | data[DATA_HEADER_LEN + 1]);
      return Object.freeze({ type: 'close', connId, reason });
    }
    case EnvelopeType.OPEN: {
      exactly(data, DATA_HEADER_LEN, 'OPEN');
      const connId = readConnId(data);
      checkConnId(connId);
      return Object.freeze({ type: 'open', connId });
    }
    case EnvelopeType.CONNECT: {
      exactly(data, DATA_HEADER_LEN + DEVICE_ID_LEN, 'CONNECT');
      const connId = readConnId(data);
      checkConnId(connId);
      const deviceId = asciiText(data.subarray(DATA_HEADER_LEN));
      checkDeviceId(deviceId);
      return Object.freeze({ type: 'connect', connId, deviceId });
    }
    case EnvelopeType.REGISTERED: {
      exactly(data, 1 + DEVICE_ID_LEN, 'REGISTERED');
      const deviceId = asciiText(data.subarray(1));
      checkDeviceId(deviceId);
      return Object.freeze({ type: 'registered', deviceId });
    }
    case EnvelopeType.REGISTER: {
      exactly(data, 1 + 2 * KEY_LEN, 'REGISTER');
      return Object.freeze({ type: 'register', deviceKey: data.slice(1, 33), proof: data.slice(33) });
    }
    case EnvelopeType.CHALLENGE: {
      const originBytes = data.subarray(1 + NONCE_LEN + KEY_LEN);
      if (originBytes.length < 1 || originBytes.length > MAX_ORIGIN_LEN || originBytes.some((b) => b < 0x21 || b > 0x7e)) {
        throw new EnvelopeError(`CHALLENGE origin must be 1 to ${MAX_ORIGIN_LEN} printable ASCII characters`);
      }
      return Object.freeze({
        type: 'challenge',
        nonce: data.slice(1, 1 + NONCE_LEN),
        relayKey: data.slice(1 + NONCE_LEN, 1 + NONCE_LEN + KEY_LEN),
        origin: asciiText(originBytes),
      });
    }
    case EnvelopeType.ICE_SERVERS:
      return decodeIceServers(data.subarray(1));
    default:
      throw new EnvelopeError(`unknown envelope type 0x${type.toString(16).padStart(2, '0')}`);
  }
}

/**
 * ICE_SERVERS: an ASCII JSON body {"servers": [{urls, username, credential}], "expires_at"}, as
 * petcamd/protocol/relay.py writes and checks it. The result's `servers` are RTCIceServer objects.
 */
function decodeIceServers(body) {
  let document;
  try {
    if (body.some((b) => b > 0x7e)) throw new Error('not ASCII');
    document = JSON.parse(asciiText(body));
  } catch {
    throw new EnvelopeError('ICE_SERVERS body is not the expected JSON document');
  }
  const list = document?.servers;
  if (!Array.isArray(list) || list.length < 1 || list.length > MAX_ICE_SERVERS) {
    throw new EnvelopeError(`ICE_SERVERS must name 1 to ${MAX_ICE_SERVERS} servers`);
  }
  if (!Number.isInteger(document.expires_at)) throw new EnvelopeError('ICE_SERVERS expires_at must be an integer');
  const text = (value, optional) => {
    if (optional && (value === null || value === undefined)) return undefined;
    if (typeof value !== 'string' || value.length < 1 || value.length > MAX_ICE_TEXT || !/^[\x20-\x7e]+$/.test(value)) {
      throw new EnvelopeError('ICE_SERVERS entries must be short printable ASCII');
    }
    return value;
  };
  const servers = list.map((entry) => {
    const urls = text(entry?.urls, false);
    if (!/^(stun|stuns|turn|turns):/.test(urls)) throw new EnvelopeError('ICE_SERVERS urls must be STUN or TURN URLs');
    const username = text(entry.username, true);
    const credential = text(entry.credential, true);
    if (urls.startsWith('turn') && (username === undefined || credential === undefined)) {
      throw new EnvelopeError('a TURN server needs a username and a credential');
    }
    return Object.freeze(username === undefined ? { urls } : { urls, username, credential });
  });
  return Object.freeze({ type: 'ice-servers', servers: Object.freeze(servers), expiresAt: document.expires_at });
}

function asciiText(bytes) {
  let text = '';
  for (const byte of bytes) text += byte < 0x80 ? String.fromCharCode(byte) : '\ufffd';
  return text;
}

/**
 * The relay's viewer endpoint for a relay URL from a pairing URL (`wss://relay.example.org/`):
 * the relay's origin, as ws(s), with path /viewer. Throws TypeError for anything but ws(s)/http(s).
 */
export function relayViewerUrl(relayUrl) {
  const url = new URL(relayUrl);
  const scheme = { 'wss:': 'wss:', 'https:': 'wss:', 'ws:': 'ws:', 'http:': 'ws:' }[url.protocol];
  if (scheme === undefined || url.hostname === '' || url.username !== '' || url.password !== '') {
    throw new TypeError('not a relay URL');
  }
  return `${scheme}//${url.host}/viewer`;
}

/** The relay's https origin (as the page's location.origin would be) for a relay URL. */
export function relayPageOrigin(relayUrl) {
  const viewer = new URL(relayViewerUrl(relayUrl));
  return `${viewer.protocol === 'wss:' ? 'https:' : 'http:'}//${viewer.host}`;
}
