// ViewerChannel's state machine against the minimal device of test-device.mjs. Covers what the
// worked examples do not: errors, ends, pings, and frames out of place.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ChannelClosedError, ViewerChannel } from '../../petcamd/viewer/web/js/channel.js';
import { generateIdentity, keyId } from '../../petcamd/viewer/web/js/identity.js';
import {
  ErrorCode,
  FrameType,
  ProtocolError,
  encodeFrame,
  errorFrame,
} from '../../petcamd/viewer/web/js/messages.js';
import { TestDevice } from './test-device.mjs';

const sent = (outputs) => outputs.filter((o) => o.kind === 'send').map((o) => o.data);
const closed = (outputs) => outputs.find((o) => o.kind === 'closed');

/** A viewer and a device with an open session (after pairing if `pair`). */
function openChannel({ pair = false } = {}) {
  const device = new TestDevice();
  const viewer = generateIdentity();
  const channel = pair
    ? ViewerChannel.forPairing(viewer.privateKey, device.payload(), 'Test phone')
    : ViewerChannel.forSession(viewer.privateKey, device.identity.publicKey);
  const outputs = channel.feed(device.reply(channel.start()));
  if (pair) {
    assert.deepEqual(device.read(sent(outputs)[0]), { t: 'pair', name: 'Test phone' });
    const ready = channel.feed(device.send({ t: 'paired', peerId: keyId(viewer.publicKey), name: 'Cam' }));
    assert.deepEqual(ready.map((o) => o.kind), ['ready']);
  } else {
    assert.deepEqual(outputs.map((o) => o.kind), ['ready']);
  }
  return { channel, device, viewer };
}

test('pairing then messages both ways; the channel answers pings itself', () => {
  const { channel, device } = openChannel({ pair: true });
  assert.equal(channel.isPairing, true);
  assert.deepEqual(device.read(channel.send({ t: 'offer', sdp: 'v=0\r\n' })), { t: 'offer', sdp: 'v=0\r\n' });
  assert.deepEqual(channel.feed(device.send({ t: 'answer', sdp: 'v=0\r\n' })), [
    { kind: 'received', message: { t: 'answer', sdp: 'v=0\r\n' } },
  ]);
  const pong = channel.feed(device.send({ t: 'ping', seq: 42 }));
  assert.deepEqual(device.read(sent(pong)[0]), { t: 'pong', seq: 42 });
  assert.deepEqual(device.read(channel.send({ t: 'keyframe' })), { t: 'keyframe' });
  assert.deepEqual(device.read(channel.send({ t: 'ice', candidate: '' })), {
    t: 'ice',
    candidate: '',
    sdpMid: null,
    sdpMLineIndex: null,
  });
});

test('the ready output of a session carries the device key only', () => {
  const device = new TestDevice();
  const channel = ViewerChannel.forSession(generateIdentity().privateKey, device.identity.publicKey);
  const [ready] = channel.feed(device.reply(channel.start()).buffer); // an ArrayBuffer, as a WebSocket gives
  assert.deepEqual(ready, { kind: 'ready', deviceKey: device.identity.publicKey, peerId: null, deviceName: null });
});

test('a wrong pairing secret fails with PAIRING_FAILED in a plaintext ERROR frame', () => {
  const device = new TestDevice();
  const channel = ViewerChannel.forPairing(generateIdentity().privateKey, device.payload(), 'Phone');
  const outputs = channel.feed(device.reply(channel.start(), new Uint8Array(16).fill(9)));
  assert.deepEqual(sent(outputs), [errorFrame(ErrorCode.PAIRING_FAILED)]);
  assert.deepEqual(closed(outputs), {
    kind: 'closed',
    code: ErrorCode.PAIRING_FAILED,
    byPeer: false,
    verified: true,
    remoteReason: '',
  });
  assert.ok(channel.isClosed);
  assert.deepEqual(channel.feed(new Uint8Array([5, 0, 1])), []);
  assert.throws(() => channel.send({ t: 'bye' }), ChannelClosedError);
});

test('a session reply from the wrong key fails with BAD_MESSAGE', () => {
  const device = new TestDevice();
  const impostor = new TestDevice();
  const channel = ViewerChannel.forSession(generateIdentity().privateKey, device.identity.publicKey);
  const hello = channel.start();
  // The impostor cannot even read message 1 (it is encrypted to the real device's key).
  assert.throws(() => impostor.reply(hello));
  const outputs = channel.feed(encodeFrame(FrameType.HANDSHAKE_REPLY, new Uint8Array(48).fill(1)));
  assert.deepEqual(sent(outputs), [errorFrame(ErrorCode.BAD_MESSAGE)]);
  assert.equal(closed(outputs).code, ErrorCode.BAD_MESSAGE);
});

test('the device id in the pairing URL must be the key id of its key', () => {
  const device = new TestDevice();
  const payload = { ...device.payload(), deviceId: 'aaaaaaaaaaaaaaaa' };
  assert.throws(() => ViewerChannel.forPairing(generateIdentity().privateKey, payload, 'Phone'), ProtocolError);
  assert.throws(() => ViewerChannel.forPairing(generateIdentity().privateKey, device.payload(), ' '), ProtocolError);
});

test('an ERROR frame ends the channel, unverified', () => {
  const { channel } = openChannel();
  const outputs = channel.feed(errorFrame(ErrorCode.NOT_PAIRED));
  assert.deepEqual(outputs, [{ kind: 'closed', code: ErrorCode.NOT_PAIRED, byPeer: true, verified: false, remoteReason: '' }]);
  const before = ViewerChannel.forSession(generateIdentity().privateKey, new TestDevice().identity.publicKey);
  before.start();
  assert.equal(closed(before.feed(errorFrame(999))).code, ErrorCode.UNKNOWN);
});

test('error and bye messages end the channel, verified', () => {
  const { channel, device } = openChannel();
  const outputs = channel.feed(device.send({ t: 'error', code: ErrorCode.REVOKED, reason: 'revoked' }));
  assert.deepEqual(outputs, [{ kind: 'closed', code: ErrorCode.REVOKED, byPeer: true, verified: true, remoteReason: 'revoked' }]);
  const second = openChannel();
  assert.deepEqual(second.channel.feed(second.device.send({ t: 'bye' })), [
    { kind: 'closed', code: null, byPeer: true, verified: true, remoteReason: '' },
  ]);
});

test('anything malformed after authentication: an encrypted error BAD_MESSAGE, then closed', () => {
  const cases = [
    ({ device }) => device.sendRaw(new TextEncoder().encode('{"t":"keyframe"}')), // wrong sender
    ({ device }) => device.sendRaw(new TextEncoder().encode('{"t":"pair","name":"x"}')),
    ({ device }) => device.sendRaw(new TextEncoder().encode('{"t":"paired","peerId":"aaaaaaaaaaaaaaaa","name":"x"}')),
    ({ device }) => device.sendRaw(new TextEncoder().encode('{"t":"ping","seq":1.0}')),
    ({ device }) => device.sendRaw(new TextEncoder().encode('{"t":"nope"}')),
    () => encodeFrame(FrameType.TRANSPORT, new Uint8Array(40)), // does not decrypt
    () => encodeFrame(FrameType.HANDSHAKE_REPLY, new Uint8Array(48)), // out of place
    () => new Uint8Array([9, 9]), // not a frame
    () => 'text message', // a text WebSocket message
  ];
  for (const make of cases) {
    const open = openChannel();
    const outputs = open.channel.feed(make(open));
    assert.equal(outputs.length, 2);
    assert.deepEqual(open.device.read(sent(outputs)[0]), {
      t: 'error',
      code: ErrorCode.BAD_MESSAGE,
      reason: 'malformed, out-of-order or undecryptable message',
    });
    assert.equal(closed(outputs).code, ErrorCode.BAD_MESSAGE);
  }
});

test('while waiting for paired, anything else ends the pairing', () => {
  const device = new TestDevice();
  const channel = ViewerChannel.forPairing(generateIdentity().privateKey, device.payload(), 'Phone');
  channel.feed(device.reply(channel.start()));
  const outputs = channel.feed(device.send({ t: 'answer', sdp: 'v=0\r\n' }));
  assert.equal(closed(outputs).code, ErrorCode.BAD_MESSAGE);
  const other = new TestDevice();
  const refused = ViewerChannel.forPairing(generateIdentity().privateKey, other.payload(), 'Phone');
  refused.feed(other.reply(refused.start()));
  const ended = refused.feed(other.send({ t: 'error', code: ErrorCode.PAIRING_CLOSED, reason: 'closed' }));
  assert.deepEqual(ended.map((o) => o.kind), ['closed']);
  assert.equal(closed(ended).code, ErrorCode.PAIRING_CLOSED);
});

test('misuse by the caller throws; close and connectionLost', () => {
  const device = new TestDevice();
  const channel = ViewerChannel.forSession(generateIdentity().privateKey, device.identity.publicKey);
  assert.throws(() => channel.feed(new Uint8Array(3)), /start\(\)/);
  channel.start();
  assert.throws(() => channel.start(), /already/);
  assert.throws(() => channel.send({ t: 'bye' }), /not authenticated/);
  // Before the device proved its key, close() can only say it in plaintext.
  assert.deepEqual(sent(channel.close(ErrorCode.BAD_MESSAGE)), [errorFrame(ErrorCode.BAD_MESSAGE)]);

  const { channel: open, device: peer } = openChannel();
  assert.throws(() => open.send({ t: 'paired', peerId: 'aaaaaaaaaaaaaaaa', name: 'x' }), TypeError);
  assert.throws(() => open.send({ t: 'pair', name: 'x' }), TypeError);
  assert.throws(() => open.send({ t: 'offer', sdp: '' }), ProtocolError);
  const bye = open.close();
  assert.deepEqual(peer.read(sent(bye)[0]), { t: 'bye' });
  assert.deepEqual(closed(bye), { kind: 'closed', code: null, byPeer: false, verified: true, remoteReason: '' });
  assert.deepEqual(open.close(), []);

  const { channel: dropped } = openChannel();
  assert.deepEqual(dropped.connectionLost(), [{ kind: 'closed', code: null, byPeer: true, verified: false, remoteReason: '' }]);
  assert.deepEqual(dropped.connectionLost(), []);
});
