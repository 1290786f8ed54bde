// The wire format of docs/protocol.md, as petcamd/protocol/messages.py implements it.
//
// Two layers. Outer *frames* are what a relay or the LAN server sees: one WebSocket binary message
// each, a type byte and a body. Inner *messages* travel only inside Noise transport payloads:
// UTF-8 JSON objects with a "t" member. Here an inner message is a plain frozen object whose members
// are exactly the wire's: {t: 'offer', sdp}, {t: 'ice', candidate, sdpMid, sdpMLineIndex}, ...
//
// Parsing is strict and matches the Python decoder: sizes first, then exact lengths, strict UTF-8,
// no byte-order mark, no duplicate keys, no NaN, integers written as integers, no lone surrogates.
// JSON.parse cannot tell 1 from 1.0 and keeps the last of two duplicate keys, so inner messages go
// through the small parser below instead. Every malformed input throws ProtocolError, whose
// message never quotes what the peer sent.

import { codePointLength, isWellFormedText, utf8Decode, utf8Encode } from './bytes.js';

export const PROTOCOL_VERSION = 1;
export const PROLOGUE_PREFIX = utf8Encode('petcamd/1');

const NOISE_TAG_LEN = 16;
const NOISE_KEY_LEN = 32;
/** Message 1 of IK / IKpsk2 with an empty payload: e, encrypted s (+tag), the empty payload's tag. */
export const HELLO_LEN = NOISE_KEY_LEN + (NOISE_KEY_LEN + NOISE_TAG_LEN) + NOISE_TAG_LEN;
/** Message 2 with an empty payload: e, the empty payload's tag. */
export const HANDSHAKE_REPLY_LEN = NOISE_KEY_LEN + NOISE_TAG_LEN;

/** Largest frame (type byte included): a relay can cap WebSocket messages at this. */
export const MAX_FRAME_LEN = 65535;
export const MAX_TRANSPORT_LEN = MAX_FRAME_LEN - 1;
/** Largest encoded inner message, so that its transport frame fits in MAX_FRAME_LEN. */
export const MAX_INNER_LEN = MAX_TRANSPORT_LEN - NOISE_TAG_LEN;
export const MIN_TRANSPORT_LEN = NOISE_TAG_LEN + 2; // the shortest JSON object, "{}", plus the tag

/** In UTF-8 bytes. The encoded message must also fit in MAX_INNER_LEN (escapes count). */
export const MAX_SDP_LEN = 32 * 1024;
export const MAX_NAME_LEN = 64;
export const MAX_CANDIDATE_LEN = 1024;
export const MAX_MID_LEN = 64;
export const MAX_MLINE_INDEX = 65535;
export const MAX_REASON_LEN = 128;
/** Largest integer a JavaScript number holds exactly. */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;
/** Deeper nesting (possible only in members this version ignores) is rejected. */
export const MAX_JSON_DEPTH = 512;

const PEER_ID = /^[a-z2-7]{16}$/;
const ASCII_PRINTABLE = /^[\x20-\x7e]*$/;
// SDP is CRLF-separated text: no C0 or C1 control characters but tab, CR and LF.
const SDP_FORBIDDEN = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/;
// Python's str.isprintable(): false for categories Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs but the space.
const NOT_PRINTABLE = /(?!\x20)[\p{C}\p{Z}]/u;

/** A frame or message is malformed or breaks a limit; the message never quotes the input. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** Why a channel ended. Sent as a 16-bit number; receivers map unknown numbers to UNKNOWN. */
export const ErrorCode = Object.freeze({
  UNKNOWN: 0,
  BAD_MESSAGE: 1,
  NOT_PAIRED: 2,
  PAIRING_CLOSED: 3,
  PAIRING_FAILED: 4,
  TOO_MANY_VIEWERS: 5,
  DEVICE_UNAVAILABLE: 6,
  REVOKED: 7,
  RATE_LIMITED: 8,
  INTERNAL: 9,
});

/** Short owner-readable text per code; the same text the daemon sends as an error's reason. */
export const ERROR_DESCRIPTIONS = Object.freeze({
  [ErrorCode.UNKNOWN]: 'an error this version does not know',
  [ErrorCode.BAD_MESSAGE]: 'malformed, out-of-order or undecryptable message',
  [ErrorCode.NOT_PAIRED]: 'this viewer is not paired with the camera',
  [ErrorCode.PAIRING_CLOSED]: 'no pairing window is open (expired, already used, locked or cancelled)',
  [ErrorCode.PAIRING_FAILED]: 'pairing failed: wrong pairing code or camera key',
  [ErrorCode.TOO_MANY_VIEWERS]: 'the camera serves as many viewers as it can',
  [ErrorCode.DEVICE_UNAVAILABLE]: 'the camera is not reachable',
  [ErrorCode.REVOKED]: "this viewer's pairing was revoked",
  [ErrorCode.RATE_LIMITED]: 'too many attempts; try again later',
  [ErrorCode.INTERNAL]: 'internal error on the camera',
});

const ERROR_NAMES = new Map(Object.entries(ErrorCode).map(([name, code]) => [code, name]));

/** A code received from the network: known codes stay, anything else becomes UNKNOWN. */
export const errorCodeFromWire = (value) => (ERROR_NAMES.has(value) ? value : ErrorCode.UNKNOWN);

/** 'NOT_PAIRED' for 2, 'UNKNOWN' for numbers this version does not know. */
export const errorName = (code) => ERROR_NAMES.get(code) ?? 'UNKNOWN';

// ---------------------------------------------------------------------------------------------
// Frames

/** The first byte of every frame. New protocol versions use new numbers. */
export const FrameType = Object.freeze({
  PAIR_HELLO: 0x01, // Noise_IKpsk2 message 1, viewer to device
  SESSION_HELLO: 0x02, // Noise_IK message 1, viewer to device
  HANDSHAKE_REPLY: 0x03, // Noise message 2 of either handshake, device to viewer
  TRANSPORT: 0x04, // a Noise transport message carrying one inner message, either direction
  ERROR: 0x05, // plaintext, unauthenticated: a 16-bit big-endian error code and nothing else
});

const FRAME_NAMES = new Map(Object.entries(FrameType).map(([name, type]) => [type, name]));

/** 'TRANSPORT' for 0x04. */
export const frameTypeName = (type) => FRAME_NAMES.get(type);

const BODY_LENGTHS = new Map([
  [FrameType.PAIR_HELLO, [HELLO_LEN, HELLO_LEN]],
  [FrameType.SESSION_HELLO, [HELLO_LEN, HELLO_LEN]],
  [FrameType.HANDSHAKE_REPLY, [HANDSHAKE_REPLY_LEN, HANDSHAKE_REPLY_LEN]],
  [FrameType.TRANSPORT, [MIN_TRANSPORT_LEN, MAX_TRANSPORT_LEN]],
  [FrameType.ERROR, [2, 2]],
]);

/** Noise prologue of a handshake: binds the version and the hello type into the keys. */
export function prologue(hello) {
  if (hello !== FrameType.PAIR_HELLO && hello !== FrameType.SESSION_HELLO) {
    throw new TypeError('only hello frames start a handshake');
  }
  const out = new Uint8Array(PROLOGUE_PREFIX.length + 1);
  out.set(PROLOGUE_PREFIX);
  out[PROLOGUE_PREFIX.length] = hello;
  return out;
}

function checkBody(type, body) {
  const [low, high] = BODY_LENGTHS.get(type);
  if (body.length < low || body.length > high) {
    const name = frameTypeName(type);
    if (low === high) throw new ProtocolError(`${name} body must be ${low} bytes, not ${body.length}`);
    throw new ProtocolError(`${name} body must be ${low} to ${high} bytes, not ${body.length}`);
  }
}

/** One frame as {type, body}; throws ProtocolError for an unknown type or a wrong length. */
export function decodeFrame(data) {
  if (!(data instanceof Uint8Array)) throw new TypeError('a frame is a Uint8Array');
  if (data.length === 0) throw new ProtocolError('empty frame');
  if (data.length > MAX_FRAME_LEN) throw new ProtocolError(`frame larger than ${MAX_FRAME_LEN} bytes`);
  const type = data[0];
  if (!BODY_LENGTHS.has(type)) {
    throw new ProtocolError(`unknown frame type 0x${type.toString(16).padStart(2, '0')}`);
  }
  const body = data.slice(1);
  checkBody(type, body);
  return Object.freeze({ type, body });
}

/** The bytes of a frame: the type byte, then the body (checked like a received one). */
export function encodeFrame(type, body) {
  if (!BODY_LENGTHS.has(type)) throw new TypeError('unknown frame type');
  checkBody(type, body);
  const out = new Uint8Array(1 + body.length);
  out[0] = type;
  out.set(body, 1);
  return out;
}

/** An ERROR frame carrying `code`. */
export function errorFrame(code) {
  if (!Number.isInteger(code) || code < 0 || code > 0xffff) throw new RangeError('error code out of range');
  return encodeFrame(FrameType.ERROR, Uint8Array.of(code >> 8, code & 0xff));
}

/** The code of a decoded ERROR frame, unknown numbers mapped to UNKNOWN. */
export function frameErrorCode(frame) {
  if (frame.type !== FrameType.ERROR) throw new TypeError('not an ERROR frame');
  return errorCodeFromWire((frame.body[0] << 8) | frame.body[1]);
}

// ---------------------------------------------------------------------------------------------
// Inner messages

/** Which end may send a message type; a channel rejects messages from the wrong end. */
export const Role = Object.freeze({ VIEWER: 1, DEVICE: 2, EITHER: 3 });

function checkUnicode(kind, key, value) {
  if (!isWellFormedText(value)) throw new ProtocolError(`${kind}: ${key} is not valid Unicode`);
}

function checkName(kind, key, value) {
  checkUnicode(kind, key, value);
  if (value.trim() === '') throw new ProtocolError(`${kind}: ${key} must not be empty`);
  if (codePointLength(value) > MAX_NAME_LEN) {
    throw new ProtocolError(`${kind}: ${key} longer than ${MAX_NAME_LEN} characters`);
  }
  if (NOT_PRINTABLE.test(value)) {
    throw new ProtocolError(`${kind}: ${key} contains control or formatting characters`);
  }
}

function checkSdp(kind, sdp) {
  checkUnicode(kind, 'sdp', sdp);
  if (sdp === '') throw new ProtocolError(`${kind}: empty SDP`);
  if (utf8Encode(sdp).length > MAX_SDP_LEN) throw new ProtocolError(`${kind}: SDP larger than ${MAX_SDP_LEN} bytes`);
  if (SDP_FORBIDDEN.test(sdp)) throw new ProtocolError(`${kind}: SDP contains control characters`);
}

function checkSeq(kind, seq) {
  if (!(seq >= 0 && seq <= MAX_SEQ)) throw new ProtocolError(`${kind}: seq out of range`);
}

/** Typed access to a parsed JSON object; a missing or mistyped member throws ProtocolError. */
class Fields {
  constructor(kind, object) {
    this.kind = kind;
    this.object = object;
  }

  #fail(key, expected) {
    throw new ProtocolError(`${this.kind}: field '${key}' must be ${expected}`);
  }

  text(key) {
    const value = this.object[key];
    if (typeof value !== 'string') this.#fail(key, 'a string');
    return value;
  }

  optionalText(key) {
    return this.object[key] == null ? null : this.text(key);
  }

  // The parser returns numbers only for integer literals (see JsonFloat); anything else fails.
  integer(key) {
    const value = this.object[key];
    if (typeof value !== 'number') this.#fail(key, 'an integer');
    return value;
  }

  optionalInteger(key) {
    return this.object[key] == null ? null : this.integer(key);
  }
}

/**
 * Message types: who may send each, how to validate one, how to read one from parsed JSON and
 * which members to write, in wire order. `build` validates and returns the normalized message.
 */
const TYPES = {
  pair: {
    sentBy: Role.VIEWER,
    build({ name }) {
      checkText('pair', 'name', name);
      checkName('pair', 'name', name);
      return { t: 'pair', name };
    },
    read: (f) => ({ name: f.text('name') }),
  },
  paired: {
    sentBy: Role.DEVICE,
    build({ peerId, name }) {
      checkText('paired', 'peerId', peerId);
      if (!PEER_ID.test(peerId)) throw new ProtocolError('paired: peerId must be 16 lowercase base32 characters');
      checkText('paired', 'name', name);
      checkName('paired', 'name', name);
      return { t: 'paired', peerId, name };
    },
    read: (f) => ({ peerId: f.text('peerId'), name: f.text('name') }),
  },
  offer: {
    sentBy: Role.EITHER,
    build({ sdp }) {
      checkText('offer', 'sdp', sdp);
      checkSdp('offer', sdp);
      return { t: 'offer', sdp };
    },
    read: (f) => ({ sdp: f.text('sdp') }),
  },
  answer: {
    sentBy: Role.EITHER,
    build({ sdp }) {
      checkText('answer', 'sdp', sdp);
      checkSdp('answer', sdp);
      return { t: 'answer', sdp };
    },
    read: (f) => ({ sdp: f.text('sdp') }),
  },
  ice: {
    sentBy: Role.EITHER,
    // A trickled candidate (RTCIceCandidateInit); an empty candidate means end-of-candidates.
    // Printable ASCII only: no line break can smuggle extra lines into the SDP it joins.
    build({ candidate, sdpMid = null, sdpMLineIndex = null }) {
      checkText('ice', 'candidate', candidate);
      if (candidate.length > MAX_CANDIDATE_LEN || !ASCII_PRINTABLE.test(candidate)) {
        throw new ProtocolError(`ice: candidate must be printable ASCII, at most ${MAX_CANDIDATE_LEN}`);
      }
      if (sdpMid != null) {
        checkText('ice', 'sdpMid', sdpMid);
        if (sdpMid.length > MAX_MID_LEN || !ASCII_PRINTABLE.test(sdpMid)) {
          throw new ProtocolError(`ice: sdpMid must be printable ASCII, at most ${MAX_MID_LEN}`);
        }
      }
      if (sdpMLineIndex != null) {
        checkInteger('ice', 'sdpMLineIndex', sdpMLineIndex);
        if (sdpMLineIndex < 0 || sdpMLineIndex > MAX_MLINE_INDEX) {
          throw new ProtocolError('ice: sdpMLineIndex out of range');
        }
      }
      return { t: 'ice', candidate, sdpMid: sdpMid ?? null, sdpMLineIndex: sdpMLineIndex ?? null };
    },
    read: (f) => ({
      candidate: f.text('candidate'),
      sdpMid: f.optionalText('sdpMid'),
      sdpMLineIndex: f.optionalInteger('sdpMLineIndex'),
    }),
  },
  // The viewer wants a fresh IDR (aiortc does not forward RTCP PLI to a passthrough track).
  keyframe: { sentBy: Role.VIEWER, build: () => ({ t: 'keyframe' }), read: () => ({}) },
  bye: { sentBy: Role.EITHER, build: () => ({ t: 'bye' }), read: () => ({}) },
  error: {
    sentBy: Role.EITHER,
    // Authenticated end of the channel; `reason` is for display only, never for logs.
    build({ code, reason = '' }) {
      checkInteger('error', 'code', code);
      if (code < 0 || code > 0xffff) throw new ProtocolError('error: code out of range');
      checkText('error', 'reason', reason);
      checkUnicode('error', 'reason', reason);
      if (codePointLength(reason) > MAX_REASON_LEN || NOT_PRINTABLE.test(reason)) {
        throw new ProtocolError(`error: reason must be printable, at most ${MAX_REASON_LEN} characters`);
      }
      return { t: 'error', code: errorCodeFromWire(code), reason };
    },
    read(f) {
      const code = f.integer('code');
      if (code < 0 || code > 0xffff) throw new ProtocolError('error: code out of range');
      return { code, reason: f.optionalText('reason') ?? '' };
    },
  },
  ping: {
    sentBy: Role.EITHER,
    build({ seq }) {
      checkInteger('ping', 'seq', seq);
      checkSeq('ping', seq);
      return { t: 'ping', seq };
    },
    read: (f) => ({ seq: f.integer('seq') }),
  },
  pong: {
    sentBy: Role.EITHER,
    build({ seq }) {
      checkInteger('pong', 'seq', seq);
      checkSeq('pong', seq);
      return { t: 'pong', seq };
    },
    read: (f) => ({ seq: f.integer('seq') }),
  },
};

function checkText(kind, key, value) {
  if (typeof value !== 'string') throw new ProtocolError(`${kind}: field '${key}' must be a string`);
}

function checkInteger(kind, key, value) {
  if (!Number.isSafeInteger(value)) throw new ProtocolError(`${kind}: field '${key}' must be an integer`);
}

/** The message types of this protocol version, e.g. 'offer'. */
export const MESSAGE_TYPES = Object.freeze(Object.keys(TYPES));

/** Which end may send messages of type `t` (a Role), or undefined for an unknown type. */
export const sentBy = (t) => (Object.hasOwn(TYPES, t) ? TYPES[t].sentBy : undefined);

/**
 * A validated, frozen inner message from its members, e.g. message({t: 'offer', sdp}).
 * Throws ProtocolError for an unknown type or an invalid member (the same rules as decoding).
 */
export function message(fields) {
  const t = fields?.t;
  if (typeof t !== 'string' || !Object.hasOwn(TYPES, t)) throw new ProtocolError('unknown message type');
  return Object.freeze(TYPES[t].build(fields));
}

/**
 * Compact UTF-8 JSON, "t" first, byte for byte what the Python encoder writes (JSON.stringify
 * escapes exactly the characters json.dumps(ensure_ascii=False) escapes, for valid Unicode).
 * Optional ice members that are null are left out; an error always carries its reason.
 */
export function encodeMessage(fields) {
  const msg = message(fields);
  const document = {};
  for (const [key, value] of Object.entries(msg)) {
    if (value !== null) document[key] = value;
  }
  const data = utf8Encode(JSON.stringify(document));
  if (data.length > MAX_INNER_LEN) {
    throw new ProtocolError(`${msg.t}: encoded message larger than ${MAX_INNER_LEN} bytes`);
  }
  return data;
}

/** Parses one inner message; unknown members are ignored, unknown types rejected. */
export function decodeMessage(data) {
  if (!(data instanceof Uint8Array)) throw new TypeError('a message is a Uint8Array');
  if (data.length > MAX_INNER_LEN) throw new ProtocolError(`message larger than ${MAX_INNER_LEN} bytes`);
  let text;
  try {
    text = utf8Decode(data);
  } catch {
    throw new ProtocolError('message is not UTF-8');
  }
  const document = parseStrictJson(text);
  if (typeof document !== 'object' || document === null || Array.isArray(document) || document instanceof JsonFloat) {
    throw new ProtocolError('message is not a JSON object');
  }
  const kind = document.t;
  if (typeof kind !== 'string') throw new ProtocolError("message has no type field 't'");
  if (!Object.hasOwn(TYPES, kind)) throw new ProtocolError('unknown message type');
  const spec = TYPES[kind];
  return Object.freeze(spec.build({ t: kind, ...spec.read(new Fields(kind, document)) }));
}

// ---------------------------------------------------------------------------------------------
// Strict JSON (RFC 8259), as Python's json.loads with the decoder's hooks

/** A number written with a fraction or an exponent: never accepted where an integer is due. */
class JsonFloat {
  constructor(value) {
    this.value = value;
  }
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
const WHITESPACE = /[ \t\n\r]*/y;
const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

/**
 * JSON.parse cannot be used: it keeps the last of duplicate keys, reads 1.0 as 1 and would let a
 * "__proto__" key through to an object's prototype. Objects come back with a null prototype.
 */
function parseStrictJson(text) {
  let pos = 0;
  const invalid = () => new ProtocolError('message is not valid JSON');

  const skipWhitespace = () => {
    WHITESPACE.lastIndex = pos;
    WHITESPACE.exec(text);
    pos = WHITESPACE.lastIndex;
  };

  const parseString = () => {
    pos++; // opening quote
    let out = '';
    let start = pos;
    for (;;) {
      if (pos >= text.length) throw invalid();
      const code = text.charCodeAt(pos);
      if (code === 0x22) break;
      if (code < 0x20) throw invalid(); // raw control characters must be escaped
      if (code !== 0x5c) {
        pos++;
        continue;
      }
      out += text.slice(start, pos);
      const escape = text[pos + 1];
      if (escape === 'u') {
        const hex = text.slice(pos + 2, pos + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) throw invalid();
        out += String.fromCharCode(parseInt(hex, 16)); // surrogate pairs join by themselves
        pos += 6;
      } else if (escape !== undefined && Object.hasOwn(ESCAPES, escape)) {
        out += ESCAPES[escape];
        pos += 2;
      } else {
        throw invalid();
      }
      start = pos;
    }
    out += text.slice(start, pos);
    pos++; // closing quote
    return out;
  };

  const parseValue = (depth) => {
    if (depth > MAX_JSON_DEPTH) throw invalid();
    skipWhitespace();
    const char = text[pos];
    if (char === '{') {
      pos++;
      const object = Object.create(null);
      const seen = new Set();
      skipWhitespace();
      if (text[pos] === '}') {
        pos++;
        return object;
      }
      for (;;) {
        skipWhitespace();
        if (text[pos] !== '"') throw invalid();
        const key = parseString();
        if (seen.has(key)) throw new ProtocolError('duplicate key in message');
        seen.add(key);
        skipWhitespace();
        if (text[pos] !== ':') throw invalid();
        pos++;
        object[key] = parseValue(depth + 1);
        skipWhitespace();
        if (text[pos] === ',') {
          pos++;
        } else if (text[pos] === '}') {
          pos++;
          return object;
        } else {
          throw invalid();
        }
      }
    }
    if (char === '[') {
      pos++;
      const array = [];
      skipWhitespace();
      if (text[pos] === ']') {
        pos++;
        return array;
      }
      for (;;) {
        array.push(parseValue(depth + 1));
        skipWhitespace();
        if (text[pos] === ',') {
          pos++;
        } else if (text[pos] === ']') {
          pos++;
          return array;
        } else {
          throw invalid();
        }
      }
    }
    if (char === '"') return parseString();
    for (const [literal, value] of [
      ['true', true],
      ['false', false],
      ['null', null],
    ]) {
      if (text.startsWith(literal, pos)) {
        pos += literal.length;
        return value;
      }
    }
    for (const constant of ['NaN', 'Infinity', '-Infinity']) {
      if (text.startsWith(constant, pos)) throw new ProtocolError('NaN and Infinity are not allowed');
    }
    NUMBER.lastIndex = pos;
    const match = NUMBER.exec(text);
    if (match === null) throw invalid();
    pos = NUMBER.lastIndex;
    const value = Number(match[0]);
    // An integer literal too large for a double becomes Infinity: every range check rejects it.
    return match[1] === undefined && match[2] === undefined ? value : new JsonFloat(value);
  };

  const value = parseValue(0);
  skipWhitespace();
  if (pos !== text.length) throw invalid();
  return value;
}
