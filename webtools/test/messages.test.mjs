// The wire format in JS: exact encodings (the same bytes as petcamd/protocol/messages.py), strict
// parsing of every malformed case the Python suite lists, frames and their limits.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { utf8Encode } from '../../petcamd/viewer/web/js/bytes.js';
import {
  ErrorCode,
  FrameType,
  HANDSHAKE_REPLY_LEN,
  HELLO_LEN,
  MAX_CANDIDATE_LEN,
  MAX_FRAME_LEN,
  MAX_INNER_LEN,
  MAX_NAME_LEN,
  MAX_SDP_LEN,
  MAX_SEQ,
  MESSAGE_TYPES,
  ProtocolError,
  Role,
  decodeFrame,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  errorFrame,
  errorName,
  frameErrorCode,
  message,
  prologue,
  sentBy,
} from '../../petcamd/viewer/web/js/messages.js';

const bytes = (text) => utf8Encode(text);
const latin1 = (text) => Uint8Array.from(text, (char) => char.charCodeAt(0));

// [message, exact wire text] — the same table as tests/test_messages.py.
const EXAMPLES = [
  [{ t: 'pair', name: "Anna's phone" }, '{"t":"pair","name":"Anna\'s phone"}'],
  [{ t: 'paired', peerId: 'abcdefghijklmn23', name: 'Kitchen' }, '{"t":"paired","peerId":"abcdefghijklmn23","name":"Kitchen"}'],
  [{ t: 'offer', sdp: 'v=0\r\n' }, '{"t":"offer","sdp":"v=0\\r\\n"}'],
  [{ t: 'answer', sdp: 'v=0\r\n' }, '{"t":"answer","sdp":"v=0\\r\\n"}'],
  [
    { t: 'ice', candidate: 'candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host', sdpMid: '0', sdpMLineIndex: 0 },
    '{"t":"ice","candidate":"candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}',
  ],
  [{ t: 'ice', candidate: '', sdpMid: null, sdpMLineIndex: null }, '{"t":"ice","candidate":""}'],
  [{ t: 'keyframe' }, '{"t":"keyframe"}'],
  [{ t: 'bye' }, '{"t":"bye"}'],
  [{ t: 'error', code: ErrorCode.REVOKED, reason: 'revoked' }, '{"t":"error","code":7,"reason":"revoked"}'],
  [{ t: 'ping', seq: 9007199254740991 }, '{"t":"ping","seq":9007199254740991}'],
  [{ t: 'pong', seq: 0 }, '{"t":"pong","seq":0}'],
  [{ t: 'pair', name: 'Café ☕' }, '{"t":"pair","name":"Café ☕"}'],
];

test('encodings are exact and round trip', () => {
  for (const [msg, wire] of EXAMPLES) {
    assert.deepEqual(encodeMessage(msg), bytes(wire), wire);
    assert.deepEqual(decodeMessage(bytes(wire)), msg, wire);
    assert.ok(Object.isFrozen(decodeMessage(bytes(wire))));
  }
});

test('every type has an example and a sender', () => {
  assert.deepEqual(new Set(EXAMPLES.map(([msg]) => msg.t)), new Set(MESSAGE_TYPES));
  assert.equal(sentBy('pair'), Role.VIEWER);
  assert.equal(sentBy('keyframe'), Role.VIEWER);
  assert.equal(sentBy('paired'), Role.DEVICE);
  assert.equal(sentBy('offer'), Role.EITHER);
  assert.equal(sentBy('hello'), undefined);
  assert.equal(sentBy('__proto__'), undefined);
});

test('unknown members are ignored and null optionals accepted', () => {
  const ice = decodeMessage(bytes('{"t":"ice","candidate":"","sdpMid":null,"sdpMLineIndex":null,"future":[1,{"x":2}]}'));
  assert.deepEqual(ice, { t: 'ice', candidate: '', sdpMid: null, sdpMLineIndex: null });
  assert.deepEqual(decodeMessage(bytes('{"zzz":1,"t":"bye"}')), { t: 'bye' });
  assert.deepEqual(decodeMessage(bytes('{"t":"error","code":3}')), { t: 'error', code: 3, reason: '' });
  assert.deepEqual(decodeMessage(bytes(' \n{"t" : "keyframe"}\t')), { t: 'keyframe' });
  assert.deepEqual(decodeMessage(bytes('{"t":"bye","__proto__":{"polluted":1}}')), { t: 'bye' });
  assert.equal({}.polluted, undefined);
  assert.deepEqual(decodeMessage(bytes('{"t":"pair","name":"\\ud83d\\ude00 \\u00e9\\/"}')), { t: 'pair', name: '😀 é/' });
});

test('unknown error codes map to UNKNOWN', () => {
  assert.deepEqual(decodeMessage(bytes('{"t":"error","code":999,"reason":""}')), { t: 'error', code: 0, reason: '' });
  assert.equal(frameErrorCode(decodeFrame(Uint8Array.of(5, 3, 0xe7))), ErrorCode.UNKNOWN);
  assert.equal(errorName(2), 'NOT_PAIRED');
  assert.equal(errorName(999), 'UNKNOWN');
});

// [input bytes, why] — the same cases as tests/test_messages.py's MALFORMED.
const MALFORMED = [
  [new Uint8Array(0), 'empty'],
  [Uint8Array.of(0xff, 0xfe, 0x7b, 0x7d), 'not UTF-8'],
  [latin1('\xef\xbb\xbf{"t":"bye"}'), 'a byte-order mark is not JSON'],
  [bytes('{"t":"bye"'), 'unterminated'],
  [bytes('["bye"]'), 'not an object'],
  [bytes('"bye"'), 'not an object'],
  [bytes('1.5'), 'not an object'],
  [bytes('{}'), 'no type'],
  [bytes('{"t":7}'), 'type not a string'],
  [bytes('{"t":"hello"}'), 'unknown type'],
  [bytes('{"t":"Bye"}'), 'unknown type'],
  [bytes('{"t":"toString"}'), 'unknown type'],
  [bytes('{"t":"bye","t":"bye"}'), 'duplicate'],
  [bytes('{"t":"bye","x":{"a":1,"a":2}}'), 'nested duplicate'],
  [bytes('{"t":"ping","seq":NaN}'), 'NaN'],
  [bytes('{"t":"ping","seq":Infinity}'), 'Infinity'],
  [bytes('{"t":"ping","seq":-Infinity}'), 'Infinity'],
  [bytes('{"t":"ping","seq":1.0}'), 'float'],
  [bytes('{"t":"ping","seq":1e2}'), 'exponent'],
  [bytes('{"t":"ping","seq":true}'), 'boolean'],
  [bytes('{"t":"ping","seq":"1"}'), 'string'],
  [bytes('{"t":"ping"}'), 'missing'],
  [bytes('{"t":"ping","seq":-1}'), 'range'],
  [bytes('{"t":"ping","seq":9007199254740992}'), 'range'],
  [bytes(`{"t":"ping","seq":1${'0'.repeat(5000)}}`), 'huge'],
  [bytes('{"t":"ping","seq":01}'), 'leading zero'],
  [bytes('{"t":"ping","seq":+1}'), 'plus sign'],
  [bytes('{"t":"pair"}'), 'missing'],
  [bytes('{"t":"pair","name":null}'), 'null'],
  [bytes('{"t":"pair","name":""}'), 'empty'],
  [bytes('{"t":"pair","name":"   "}'), 'blank'],
  [bytes('{"t":"pair","name":"a\\u0007b"}'), 'control'],
  [bytes('{"t":"pair","name":"a\\u202eb"}'), 'right-to-left override'],
  [bytes('{"t":"pair","name":"a\\u00a0b"}'), 'no-break space'],
  [bytes('{"t":"pair","name":"a\\u2028b"}'), 'line separator'],
  [bytes('{"t":"pair","name":"a\\ue000b"}'), 'private use'],
  [bytes('{"t":"pair","name":"\\ud800"}'), 'lone surrogate'],
  [bytes('{"t":"pair","name":"\\udc00x"}'), 'lone low surrogate'],
  [bytes('{"t":"pair","name":"a\tb"}'), 'raw control character in a string'],
  [bytes('{"t":"pair","name":"a\\xb"}'), 'bad escape'],
  [bytes('{"t":"pair","name":"a\\u12"}'), 'short escape'],
  [bytes(`{"t":"pair","name":"${'x'.repeat(MAX_NAME_LEN + 1)}"}`), 'longer'],
  [bytes('{"t":"paired","peerId":"ABCDEFGHIJKLMNOP","name":"x"}'), 'peerId'],
  [bytes('{"t":"paired","peerId":"abcdefghijklmno1","name":"x"}'), 'peerId'],
  [bytes('{"t":"offer","sdp":""}'), 'empty'],
  [bytes('{"t":"offer","sdp":"v=0\\u0000"}'), 'control'],
  [bytes('{"t":"answer","sdp":"v=0\\u001b[2J"}'), 'control'],
  [bytes('{"t":"answer","sdp":"v=0\\u0085"}'), 'C1 control'],
  [bytes('{"t":"offer"}'), 'missing'],
  [bytes('{"t":"ice","candidate":"a\\r\\na=evil"}'), 'line break'],
  [bytes('{"t":"ice","candidate":"café"}'), 'not ASCII'],
  [bytes(`{"t":"ice","candidate":"${'c'.repeat(MAX_CANDIDATE_LEN + 1)}"}`), 'long'],
  [bytes('{"t":"ice"}'), 'missing'],
  [bytes('{"t":"ice","candidate":"","sdpMid":0}'), 'sdpMid not a string'],
  [bytes('{"t":"ice","candidate":"","sdpMLineIndex":-1}'), 'range'],
  [bytes('{"t":"ice","candidate":"","sdpMLineIndex":"0"}'), 'string'],
  [bytes('{"t":"ice","candidate":"","sdpMLineIndex":0.0}'), 'float'],
  [bytes('{"t":"error","code":65536}'), 'range'],
  [bytes('{"t":"error","code":-1}'), 'range'],
  [bytes('{"t":"error","code":1,"reason":"a\\nb"}'), 'printable'],
  [bytes(`{"t":"error","code":1,"reason":"${'r'.repeat(129)}"}`), 'long'],
  [bytes('{"t":"bye"} {}'), 'trailing data'],
  [bytes('{"t":"bye",}'), 'trailing comma'],
  [bytes("{'t':'bye'}"), 'single quotes'],
  [bytes('[' .repeat(100_000)), 'larger'],
  [bytes('['.repeat(50_000) + ']'.repeat(50)), 'unbalanced'],
  [bytes('['.repeat(30_000) + ']'.repeat(30_000)), 'deep nesting within the size limit'],
];

test('malformed messages throw ProtocolError without quoting the input', () => {
  for (const [data, why] of MALFORMED) {
    assert.throws(
      () => decodeMessage(data),
      (error) => {
        assert.ok(error instanceof ProtocolError, `${why}: ${error}`);
        assert.ok(!error.message.includes('evil') && !error.message.includes('2J'), why);
        return true;
      },
      why,
    );
  }
});

test('names, reasons and candidates are counted in code points, SDP in bytes', () => {
  decodeMessage(bytes(`{"t":"pair","name":"${'😀'.repeat(MAX_NAME_LEN)}"}`));
  assert.throws(() => message({ t: 'pair', name: '😀'.repeat(MAX_NAME_LEN + 1) }), ProtocolError);
  message({ t: 'offer', sdp: 'é'.repeat(MAX_SDP_LEN / 2) });
  assert.throws(() => message({ t: 'offer', sdp: 'é'.repeat(MAX_SDP_LEN / 2 + 1) }), /larger/);
  const nearLimit = 'v'.repeat(MAX_SDP_LEN);
  assert.deepEqual(decodeMessage(encodeMessage({ t: 'answer', sdp: nearLimit })), { t: 'answer', sdp: nearLimit });
});

test('the encoded message must fit a frame', () => {
  // Escaping can double an SDP's size: the encoder refuses rather than build an oversized frame.
  assert.throws(() => encodeMessage({ t: 'offer', sdp: '"'.repeat(MAX_SDP_LEN) }), /encoded message larger/);
  assert.throws(() => decodeMessage(bytes(' '.repeat(MAX_INNER_LEN + 1))), /larger/);
});

test('building validates as decoding does', () => {
  assert.throws(() => message({ t: 'ping', seq: -1 }), ProtocolError);
  assert.throws(() => message({ t: 'pong', seq: MAX_SEQ + 1 }), ProtocolError);
  assert.throws(() => message({ t: 'ping', seq: 1.5 }), ProtocolError);
  assert.throws(() => message({ t: 'error', code: ErrorCode.INTERNAL, reason: 'x'.repeat(200) }), ProtocolError);
  assert.throws(() => message({ t: 'ice', candidate: '', sdpMid: '\n' }), ProtocolError);
  assert.throws(() => message({ t: 'paired', peerId: 'short', name: 'x' }), ProtocolError);
  assert.throws(() => message({ t: 'pair', name: '\ud800' }), /Unicode/);
  assert.throws(() => message({ t: 'nope' }), /unknown message type/);
  assert.throws(() => message(null), /unknown message type/);
  // Members that are not the wire's are dropped.
  assert.deepEqual(message({ t: 'bye', extra: 1 }), { t: 'bye' });
});

test('frames', () => {
  const hello = Uint8Array.from({ length: HELLO_LEN }, (_, i) => i);
  for (const type of [FrameType.PAIR_HELLO, FrameType.SESSION_HELLO]) {
    const data = encodeFrame(type, hello);
    assert.equal(data[0], type);
    assert.deepEqual(decodeFrame(data), { type, body: hello });
  }
  const reply = encodeFrame(FrameType.HANDSHAKE_REPLY, new Uint8Array(HANDSHAKE_REPLY_LEN));
  assert.equal(decodeFrame(reply).type, FrameType.HANDSHAKE_REPLY);
  assert.equal(encodeFrame(FrameType.TRANSPORT, new Uint8Array(MAX_FRAME_LEN - 1)).length, MAX_FRAME_LEN);
  assert.deepEqual(errorFrame(ErrorCode.NOT_PAIRED), Uint8Array.of(5, 0, 2));
  assert.equal(frameErrorCode(decodeFrame(Uint8Array.of(5, 0, 8))), ErrorCode.RATE_LIMITED);
  assert.throws(() => frameErrorCode(decodeFrame(reply)), TypeError);
  assert.throws(() => encodeFrame(FrameType.ERROR, new Uint8Array(3)), ProtocolError);
});

test('malformed frames', () => {
  const cases = [
    [new Uint8Array(0), /empty/],
    [Uint8Array.of(0, ...new Uint8Array(96)), /unknown frame type 0x00/],
    [Uint8Array.of(6, ...new Uint8Array(96)), /unknown frame type 0x06/],
    [Uint8Array.of(1, ...new Uint8Array(95)), /96 bytes/],
    [Uint8Array.of(2, ...new Uint8Array(97)), /96 bytes/],
    [Uint8Array.of(3, ...new Uint8Array(49)), /48 bytes/],
    [Uint8Array.of(4, ...new Uint8Array(17)), /18 to 65534/],
    [Uint8Array.of(4, ...new Uint8Array(MAX_FRAME_LEN)), /larger/],
    [Uint8Array.of(5), /2 bytes/],
    [Uint8Array.of(5, 0, 1, 0), /2 bytes/],
  ];
  for (const [data, reason] of cases) assert.throws(() => decodeFrame(data), reason);
});

test('the prologue binds the version and the hello type', () => {
  assert.deepEqual(prologue(FrameType.PAIR_HELLO), bytes('petcamd/1\x01'));
  assert.deepEqual(prologue(FrameType.SESSION_HELLO), bytes('petcamd/1\x02'));
  assert.throws(() => prologue(FrameType.TRANSPORT), /hello/);
});

test('error codes are stable', () => {
  assert.deepEqual(ErrorCode, {
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
});
