// Conformance of petcamd/viewer/web/js/noise.js against the cacophony test vectors the Python
// suite uses (tests/data/noise-cacophony-subset.json): every IK and IKpsk2 vector with
// 25519/AESGCM/SHA256, each role played by our code alone against the other side's recorded
// messages, so that a mistake shared by both ends of our own implementation cannot hide.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import { bytesToHex, hexToBytes } from '../../petcamd/viewer/web/js/bytes.js';
import { HandshakeState, NoiseError, Pattern, publicKey } from '../../petcamd/viewer/web/js/noise.js';
import { checkVector, makeSide as makeSideFor } from './noise-vector-check.mjs';

const VECTORS_PATH = new URL('../../tests/data/noise-cacophony-subset.json', import.meta.url);
const SUPPORTED = new Map(Object.values(Pattern).map((pattern) => [pattern.name, pattern]));
const vectors = JSON.parse(fs.readFileSync(VECTORS_PATH, 'utf8')).vectors.filter((v) =>
  SUPPORTED.has(v.protocol_name),
);

const LIB = { HandshakeState, Pattern, publicKey, hexToBytes, bytesToHex };
const makeSide = (vector, role) => makeSideFor(vector, role, LIB);

test('every supported protocol has vectors', () => {
  assert.deepEqual(new Set(vectors.map((v) => v.protocol_name)), new Set(SUPPORTED.keys()));
});

for (const vector of vectors) {
  for (const role of ['initiator', 'responder']) {
    test(`${vector.protocol_name} as ${role}`, () => checkVector(vector, role, LIB));
  }
}

test('a tampered message is a NoiseError and spoils the handshake', () => {
  const vector = vectors.find((v) => v.protocol_name === Pattern.IK_PSK2.name);
  const responder = makeSide(vector, 'responder');
  const first = hexToBytes(vector.messages[0].ciphertext);
  first[40] ^= 1;
  assert.throws(() => responder.readMessage(first), NoiseError);
  assert.throws(() => responder.readMessage(hexToBytes(vector.messages[0].ciphertext)), /failed earlier/);
});

test('a wrong psk fails at the initiator reading message 2, and the nonce does not move', () => {
  const vector = vectors.find((v) => v.protocol_name === Pattern.IK_PSK2.name);
  const initiator = makeSide(vector, 'initiator');
  const responder = makeSide(vector, 'responder');
  responder.readMessage(initiator.writeMessage(hexToBytes(vector.messages[0].payload)));
  responder.setPsk(new Uint8Array(32).fill(7));
  assert.throws(() => initiator.readMessage(responder.writeMessage()), NoiseError);
  assert.equal(initiator.complete, false);
});

test('transport messages: a replay or a reordering fails, a failure leaves the nonce', () => {
  const vector = vectors.find((v) => v.protocol_name === Pattern.IK.name);
  const initiator = makeSide(vector, 'initiator');
  const responder = makeSide(vector, 'responder');
  responder.readMessage(initiator.writeMessage());
  initiator.readMessage(responder.writeMessage());
  const send = initiator.transport();
  const receive = responder.transport();
  const one = send.encrypt(Uint8Array.of(1));
  const two = send.encrypt(Uint8Array.of(2));
  assert.throws(() => receive.decrypt(two), NoiseError);
  assert.deepEqual(receive.decrypt(one), Uint8Array.of(1));
  assert.throws(() => receive.decrypt(one), NoiseError);
  assert.deepEqual(receive.decrypt(two), Uint8Array.of(2));
  // Each direction has its own key: the device's first message is not the viewer's.
  assert.notDeepEqual(receive.encrypt(Uint8Array.of(1)), one);
});

test('limits and misuse', () => {
  const vector = vectors.find((v) => v.protocol_name === Pattern.IK.name);
  const initiator = makeSide(vector, 'initiator');
  assert.throws(() => initiator.readMessage(new Uint8Array(48)), /turn/);
  assert.throws(() => initiator.writeMessage(new Uint8Array(65535)), NoiseError);
  assert.throws(() => initiator.setPsk(new Uint8Array(32)), TypeError);
  const responder = makeSide(vector, 'responder');
  assert.throws(() => responder.readMessage(hexToBytes(vector.messages[0].ciphertext).slice(0, 40)), /too short/);
  // A low-order point as the ephemeral key: the DH result would be all zeros.
  const lowOrder = makeSide(vector, 'responder');
  const message = new Uint8Array(96);
  assert.throws(() => lowOrder.readMessage(message), NoiseError);
  // IKpsk2 mixes the psk into message 2: the responder cannot write it before setPsk().
  const pairing = vectors.find((v) => v.protocol_name === Pattern.IK_PSK2.name);
  const late = makeSide(pairing, 'responder');
  late.readMessage(hexToBytes(pairing.messages[0].ciphertext));
  assert.throws(() => late.writeMessage(), /pre-shared key not set/);
  assert.throws(() => HandshakeState.responder(Pattern.IK, new Uint8Array(31)), TypeError);
});
