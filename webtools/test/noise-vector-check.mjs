// One cacophony vector played by our Noise code alone, as either role, against the other side's
// recorded messages. No Node.js imports: the same check runs in Node's test runner
// (noise-vectors.test.mjs) and inside a real browser (tests/test_web_viewer_e2e.py), with the
// library passed in so each can load it from where it lives.

function fail(message) {
  throw new Error(message);
}

function psk(vector, side, lib) {
  const psks = vector[`${side}_psks`] ?? [];
  if (psks.length > 1) fail('IKpsk2 takes exactly one psk');
  return psks.length ? lib.hexToBytes(psks[0]) : null;
}

function same(a, b) {
  return a.length === b.length && a.every((value, index) => value === b[index]);
}

/** The handshake side for `role`; `lib` = {HandshakeState, Pattern, publicKey, hexToBytes, bytesToHex}. */
export function makeSide(vector, role, lib) {
  const pattern = Object.values(lib.Pattern).find((p) => p.name === vector.protocol_name);
  if (!pattern) fail(`unsupported protocol ${vector.protocol_name}`);
  if (role === 'initiator') {
    return lib.HandshakeState.initiator(pattern, lib.hexToBytes(vector.init_static), lib.hexToBytes(vector.init_remote_static), {
      prologue: lib.hexToBytes(vector.init_prologue),
      psk: psk(vector, 'init', lib),
      ephemeral: lib.hexToBytes(vector.init_ephemeral),
    });
  }
  // The responder gets its psk late, after checking message 1, as the device does when pairing.
  return lib.HandshakeState.responder(pattern, lib.hexToBytes(vector.resp_static), {
    prologue: lib.hexToBytes(vector.resp_prologue),
    ephemeral: lib.hexToBytes(vector.resp_ephemeral),
  });
}

/** Throws an Error naming the first message that differs from the vector. */
export function checkVector(vector, role, lib) {
  const { hexToBytes, bytesToHex, publicKey } = lib;
  const side = makeSide(vector, role, lib);
  const pattern = Object.values(lib.Pattern).find((p) => p.name === vector.protocol_name);
  const messages = vector.messages.map((m) => [hexToBytes(m.payload), m.ciphertext]);
  const handshakeLen = pattern.messages.length;
  if (messages.length <= handshakeLen) fail('the vector must include transport messages');

  messages.slice(0, handshakeLen).forEach(([payload, ciphertext], index) => {
    if (side.isMyTurn) {
      if (bytesToHex(side.writeMessage(payload)) !== ciphertext) fail(`handshake message ${index} differs`);
    } else {
      if (!same(side.readMessage(hexToBytes(ciphertext)), payload)) fail(`handshake message ${index}: wrong payload`);
      if (role === 'responder' && index === 0) {
        if (!same(side.remoteStatic, publicKey(hexToBytes(vector.init_static)))) fail('wrong initiator static key');
        const key = psk(vector, 'resp', lib);
        if (key !== null) side.setPsk(key);
      }
    }
  });

  if (!side.complete) fail('the handshake did not complete');
  if (bytesToHex(side.handshakeHash) !== vector.handshake_hash) fail('handshake hash differs');
  const transport = side.transport();
  if (!same(transport.handshakeHash, side.handshakeHash)) fail('transport handshake hash differs');
  const peerStatic = role === 'initiator' ? vector.resp_static : vector.init_static;
  if (!same(transport.remoteStatic, publicKey(hexToBytes(peerStatic)))) fail('wrong remote static key');

  // After the handshake the sides alternate, initiator first.
  messages.slice(handshakeLen).forEach(([payload, ciphertext], offset) => {
    const index = handshakeLen + offset;
    const weSend = (index % 2 === 0) === (role === 'initiator');
    if (weSend) {
      if (bytesToHex(transport.encrypt(payload)) !== ciphertext) fail(`transport message ${index} differs`);
    } else if (!same(transport.decrypt(hexToBytes(ciphertext)), payload)) {
      fail(`transport message ${index}: wrong payload`);
    }
  });
}
