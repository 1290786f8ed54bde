// The viewer's relay envelope codec against bytes petcamd/protocol/relay.py writes (the hex below
// is that module's output for the same values), and its strictness on malformed envelopes.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { hexToBytes, bytesToHex } from '../../petcamd/viewer/web/js/bytes.js';
import {
  CloseReason,
  EnvelopeError,
  MAX_ENVELOPE_LEN,
  decodeEnvelope,
  encodeClose,
  encodeConnect,
  encodeData,
  relayPageOrigin,
  relayViewerUrl,
} from '../../petcamd/viewer/web/js/relay-envelope.js';

const DEVICE_ID = 't4fugwqzwirwblvw';
const range = (from, to) => Uint8Array.from({ length: to - from }, (_, i) => from + i);

test('writes CONNECT, DATA and CLOSE byte for byte as the Python encoder', () => {
  assert.equal(bytesToHex(encodeConnect(1, DEVICE_ID)), '2000000001743466756777717a77697277626c7677');
  assert.equal(bytesToHex(encodeData(0xdeadbeef, hexToBytes('050002'))), '30deadbeef050002');
  assert.equal(bytesToHex(encodeClose(7, CloseReason.DEVICE_UNAVAILABLE)), '31000000070001');
  assert.equal(bytesToHex(encodeClose(7)), '31000000070000');
});

test('reads every envelope type the Python encoder writes', () => {
  assert.deepEqual(decodeEnvelope(hexToBytes('30deadbeef050002')), {
    type: 'data',
    connId: 0xdeadbeef,
    frame: hexToBytes('050002'),
  });
  assert.deepEqual(decodeEnvelope(hexToBytes('31000000070001')), {
    type: 'close',
    connId: 7,
    reason: CloseReason.DEVICE_UNAVAILABLE,
  });
  assert.deepEqual(decodeEnvelope(hexToBytes('2100000102')), { type: 'open', connId: 258 });
  assert.deepEqual(decodeEnvelope(hexToBytes('2000000001743466756777717a77697277626c7677')), {
    type: 'connect',
    connId: 1,
    deviceId: DEVICE_ID,
  });
  assert.deepEqual(decodeEnvelope(hexToBytes('12743466756777717a77697277626c7677')), {
    type: 'registered',
    deviceId: DEVICE_ID,
  });
  const challenge = decodeEnvelope(
    hexToBytes(
      '10000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f30313233' +
        '3435363738393a3b3c3d3e3f68747470733a2f2f72656c61792e6578616d706c652e6f7267',
    ),
  );
  assert.deepEqual(challenge, { type: 'challenge', nonce: range(0, 32), relayKey: range(32, 64), origin: 'https://relay.example.org' });
  const register = decodeEnvelope(new Uint8Array([0x11, ...range(0, 64)]));
  assert.deepEqual(register, { type: 'register', deviceKey: range(0, 32), proof: range(32, 64) });
});

test('an ArrayBuffer (what a WebSocket hands over) decodes too', () => {
  const data = encodeData(3, hexToBytes('0401020304050607080910111213141516171819'));
  const envelope = decodeEnvelope(data.buffer);
  assert.equal(envelope.connId, 3);
  assert.equal(envelope.frame.length, 20);
});

test('unknown CLOSE reasons read as UNKNOWN, as in Python', () => {
  assert.equal(decodeEnvelope(hexToBytes('31000000070009')).reason, CloseReason.UNKNOWN);
});

test('malformed envelopes throw EnvelopeError', () => {
  const bad = [
    '', // empty
    '01', // a petcamd frame type: never an envelope
    '05000200', // an ERROR frame sent without its envelope
    '30', // DATA without connection id
    '3000000001', // DATA without a frame
    '3000000000ff', // connection id 0
    '310000000700', // CLOSE too short
    '3100000007000100', // CLOSE too long
    '21000001', // OPEN too short
    '2000000001' + '41'.repeat(16), // CONNECT with an invalid device id
    '12' + '74'.repeat(15), // REGISTERED too short
    '11' + '00'.repeat(63), // REGISTER too short
    '10' + '00'.repeat(64), // CHALLENGE without origin
    '10' + '00'.repeat(64) + '20', // origin with a space
    'ff',
  ];
  for (const hex of bad) assert.throws(() => decodeEnvelope(hexToBytes(hex)), EnvelopeError, hex);
  assert.throws(() => decodeEnvelope(new Uint8Array(MAX_ENVELOPE_LEN + 1).fill(0x30)), EnvelopeError);
  assert.throws(() => decodeEnvelope('text'), EnvelopeError);
  const largest = new Uint8Array(MAX_ENVELOPE_LEN).fill(1);
  largest[0] = 0x30;
  assert.equal(decodeEnvelope(largest).frame.length, 65535);
});

test('encoders refuse what the relay would refuse', () => {
  assert.throws(() => encodeConnect(0, DEVICE_ID), EnvelopeError);
  assert.throws(() => encodeConnect(2 ** 32, DEVICE_ID), EnvelopeError);
  assert.throws(() => encodeConnect(1, 'T4FUGWQZWIRWBLVW'), EnvelopeError);
  assert.throws(() => encodeConnect(1, 'short'), EnvelopeError);
  assert.throws(() => encodeData(1, new Uint8Array(0)), EnvelopeError);
  assert.throws(() => encodeData(1, new Uint8Array(65536)), EnvelopeError);
  assert.throws(() => encodeClose(1, 70000), EnvelopeError);
});

test('the viewer endpoint and page origin of a relay URL follow relay_origin()', () => {
  assert.equal(relayViewerUrl('wss://Relay.Example.org:443/device'), 'wss://relay.example.org/viewer');
  assert.equal(relayPageOrigin('wss://Relay.Example.org:443/device'), 'https://relay.example.org');
  assert.equal(relayViewerUrl('wss://relay.example.org:8443/'), 'wss://relay.example.org:8443/viewer');
  assert.equal(relayPageOrigin('ws://127.0.0.1:8080/x'), 'http://127.0.0.1:8080');
  assert.equal(relayViewerUrl('https://[::1]:9000'), 'wss://[::1]:9000/viewer');
  assert.throws(() => relayViewerUrl('ftp://relay.example.org/'), TypeError);
  assert.throws(() => relayViewerUrl('wss://user:pw@relay.example.org/'), TypeError);
  assert.throws(() => relayViewerUrl('not a url'), TypeError);
});

test('reads ICE_SERVERS as the Python encoder writes it, credentials included', () => {
  // IceServers((stun:t.test:3478), (turn:t.test:3478?transport=tcp, 1700000000:viewer, c2VjcmV0)).encode()
  const wire =
    '407b2273657276657273223a5b7b2275726c73223a227374756e3a742e746573743a33343738222c22757365726e616d65223a6e756c6c2c2263726564656e7469616c223a6e756c6c7d2c7b2275726c73223a227475726e3a742e746573743a333437383f7472616e73706f72743d746370222c22757365726e616d65223a22313730303030303030303a766965776572222c2263726564656e7469616c223a226332566a636d5630227d5d2c22657870697265735f6174223a313730303030303030307d';
  const envelope = decodeEnvelope(hexToBytes(wire));
  assert.equal(envelope.type, 'ice-servers');
  assert.equal(envelope.expiresAt, 1700000000);
  assert.deepEqual(envelope.servers, [
    { urls: 'stun:t.test:3478' },
    { urls: 'turn:t.test:3478?transport=tcp', username: '1700000000:viewer', credential: 'c2VjcmV0' },
  ]);
});

test('refuses malformed ICE_SERVERS', () => {
  const bad = [
    '{}',
    '{"servers": [], "expires_at": 1}',
    '{"servers": [{"urls": "http://x"}], "expires_at": 1}',
    '{"servers": [{"urls": "turn:x"}], "expires_at": 1}',
    '{"servers": [{"urls": "stun:x"}], "expires_at": "soon"}',
    'not json',
  ];
  for (const body of bad) {
    const bytes = new Uint8Array([0x40, ...new TextEncoder().encode(body)]);
    assert.throws(() => decodeEnvelope(bytes), EnvelopeError, body);
  }
});
