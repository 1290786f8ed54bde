// The worked examples of docs/protocol.md §10 (generated from the Python channel code by
// scripts/gen-protocol-examples): with the listed keys, the JS viewer must write every viewer
// frame byte for byte and read every device frame to the listed inner message.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import { bytesToHex, hexToBytes, utf8Encode } from '../../petcamd/viewer/web/js/bytes.js';
import { ViewerChannel, pskFromSecret } from '../../petcamd/viewer/web/js/channel.js';
import { keyId } from '../../petcamd/viewer/web/js/identity.js';
import { decodeMessage, encodeMessage } from '../../petcamd/viewer/web/js/messages.js';
import { publicKey } from '../../petcamd/viewer/web/js/noise.js';
import { decodePairingUrl } from '../../petcamd/viewer/web/js/pairing-url.js';

const DOC = fs.readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
const GENERATED = DOC.slice(DOC.indexOf('<!-- BEGIN GENERATED EXAMPLES'), DOC.indexOf('<!-- END GENERATED EXAMPLES'));

/** The "Keys and values used" table as {row name: value}. */
function values() {
  const rows = {};
  for (const [, name, value] of GENERATED.matchAll(/^\| ([^|]+?) \| `?([^|`]+?)`? \|$/gm)) rows[name] = value;
  return rows;
}

/** The steps of one section: [{sender, frame (hex), inner (JSON text or null)}]. */
function steps(heading) {
  const start = GENERATED.indexOf(`### ${heading}`);
  assert.ok(start >= 0, heading);
  const end = GENERATED.indexOf('\n### ', start + 1);
  const section = GENERATED.slice(start, end < 0 ? undefined : end);
  const found = [];
  const step = /^\d+\. (viewer|device) → [^\n]*\n\n(?: {3}Inner message[^\n]*\n\n {3}```json\n {3}([^\n]*)\n {3}```\n\n)? {3}```\n((?: {3}[0-9a-f]+\n)+) {3}```/gm;
  for (const [, sender, inner, hex] of section.matchAll(step)) {
    found.push({ sender, frame: hex.replace(/\s+/g, ''), inner: inner ?? null });
  }
  return found;
}

const v = values();
const viewerKey = hexToBytes(v['viewer static private key']);

test('the listed values agree with each other', () => {
  assert.equal(bytesToHex(publicKey(hexToBytes(v['device static private key']))), v['device static public key']);
  assert.equal(keyId(hexToBytes(v['device static public key'])), v['device id = key_id(device public key)']);
  assert.equal(bytesToHex(publicKey(viewerKey)), v['viewer static public key']);
  assert.equal(keyId(publicKey(viewerKey)), v['viewer peer id = key_id(viewer public key)']);
  const psk = pskFromSecret(hexToBytes(v['pairing secret']));
  const row = Object.keys(v).find((name) => name.startsWith('psk = SHA-256'));
  assert.equal(bytesToHex(psk), v[row]);
});

/** Plays the viewer through `expected` steps; returns the outputs of the last device frame. */
function play(channel, expected) {
  let last = [];
  for (const [index, step] of expected.entries()) {
    if (step.sender === 'viewer') {
      const sent = index === 0 ? channel.start() : takeSent(last, step);
      assert.equal(bytesToHex(sent), step.frame, `viewer frame ${index + 1}`);
      if (step.inner !== null) {
        // The documented plaintext is what our encoder writes for that message.
        assert.deepEqual(encodeMessage(JSON.parse(step.inner)), utf8Encode(step.inner));
      }
    } else {
      last = channel.feed(hexToBytes(step.frame));
      assert.ok(!last.some((o) => o.kind === 'closed'), `device frame ${index + 1} closed the channel`);
      if (step.inner !== null) {
        const received = last.find((o) => o.kind === 'received' || o.kind === 'ready');
        assert.ok(received, `device frame ${index + 1}`);
        const message = decodeMessage(utf8Encode(step.inner));
        if (received.kind === 'received') assert.deepEqual(received.message, message);
        else assert.deepEqual([received.peerId, received.deviceName], [message.peerId, message.name]);
      }
    }
  }
  return last;
}

/** The frame the viewer must send next: one the channel produced, or a message the test sends. */
function takeSent(outputs, step) {
  const sends = outputs.filter((o) => o.kind === 'send');
  if (sends.length === 1) return sends[0].data;
  assert.equal(sends.length, 0);
  return step.channel.send(JSON.parse(step.inner));
}

test('pairing: the viewer writes the documented frames and reads the device', () => {
  const url = GENERATED.match(/^(http:\/\/\S+#v=1\S*)$/m)[1];
  const payload = decodePairingUrl(url);
  assert.equal(bytesToHex(payload.secret), v['pairing secret']);
  const channel = ViewerChannel.forPairing(viewerKey, payload, "Anna's phone", {
    ephemeral: hexToBytes(v['viewer ephemeral pairing private key']),
  });
  const expected = steps('Pairing');
  assert.deepEqual(expected.map((s) => s.sender), ['viewer', 'device', 'viewer', 'device']);
  const last = play(channel, expected);
  const ready = last.find((o) => o.kind === 'ready');
  assert.deepEqual(ready.deviceKey, payload.deviceKey);
  assert.equal(ready.peerId, v['viewer peer id = key_id(viewer public key)']);
  assert.equal(ready.deviceName, 'Kitchen cam');
  assert.ok(channel.isOpen);
});

test('session: hello, reply, the offer and the answer', () => {
  const channel = ViewerChannel.forSession(viewerKey, hexToBytes(v['device static public key']), {
    ephemeral: hexToBytes(v['viewer ephemeral session private key']),
  });
  const expected = steps('Session with an offer and an answer').map((step) => ({ ...step, channel }));
  assert.deepEqual(expected.map((s) => s.sender), ['viewer', 'device', 'viewer', 'device']);
  const last = play(channel, expected);
  assert.equal(last[0].kind, 'received');
  assert.equal(last[0].message.t, 'answer');
});
