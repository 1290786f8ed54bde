// The viewer must work on a plain-http LAN origin, where browsers provide crypto.getRandomValues
// but no crypto.subtle. Here the platform's crypto object is replaced by one with getRandomValues
// only, before any viewer module loads, and a whole pairing and session runs on it.

import assert from 'node:assert/strict';
import { test } from 'node:test';

const platform = globalThis.crypto;
Object.defineProperty(globalThis, 'crypto', {
  configurable: true,
  value: Object.freeze({ getRandomValues: (array) => platform.getRandomValues(array) }),
});

const { ViewerChannel, pskFromSecret } = await import('../../petcamd/viewer/web/js/channel.js');
const { generateIdentity } = await import('../../petcamd/viewer/web/js/identity.js');
const messages = await import('../../petcamd/viewer/web/js/messages.js');
const { HandshakeState, Pattern } = await import('../../petcamd/viewer/web/js/noise.js');

test('no crypto.subtle anywhere on the path: pairing, then a message each way', () => {
  assert.equal(globalThis.crypto.subtle, undefined);
  const device = generateIdentity();
  const secret = globalThis.crypto.getRandomValues(new Uint8Array(16));
  const channel = ViewerChannel.forPairing(
    generateIdentity().privateKey,
    { deviceId: device.keyId, deviceKey: device.publicKey, secret },
    'Phone',
  );
  const hello = messages.decodeFrame(channel.start());
  const responder = HandshakeState.responder(Pattern.IK_PSK2, device.privateKey, {
    prologue: messages.prologue(hello.type),
    psk: pskFromSecret(secret),
  });
  responder.readMessage(hello.body);
  const reply = messages.encodeFrame(messages.FrameType.HANDSHAKE_REPLY, responder.writeMessage());
  const transport = responder.transport();
  const [pair] = channel.feed(reply);
  const decoded = messages.decodeMessage(transport.decrypt(messages.decodeFrame(pair.data).body));
  assert.deepEqual(decoded, { t: 'pair', name: 'Phone' });
  const paired = messages.encodeMessage({ t: 'paired', peerId: 'abcdefghijklmnop', name: 'Cam' });
  const [ready] = channel.feed(messages.encodeFrame(messages.FrameType.TRANSPORT, transport.encrypt(paired)));
  assert.equal(ready.kind, 'ready');
  const offer = channel.send({ t: 'offer', sdp: 'v=0\r\n' });
  assert.deepEqual(messages.decodeMessage(transport.decrypt(messages.decodeFrame(offer).body)), {
    t: 'offer',
    sdp: 'v=0\r\n',
  });
});
