// A minimal device for the viewer's JS tests, written with noise.js (the real device is Python:
// tests/test_web_crypto.py joins the two): answers the hello, then speaks transport messages.

import { pskFromSecret } from '../../petcamd/viewer/web/js/channel.js';
import { generateIdentity } from '../../petcamd/viewer/web/js/identity.js';
import {
  FrameType,
  decodeFrame,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  frameErrorCode,
  prologue,
} from '../../petcamd/viewer/web/js/messages.js';
import { HandshakeState, Pattern } from '../../petcamd/viewer/web/js/noise.js';

export const SECRET = new Uint8Array(16).fill(3);

/** The device's half, just enough to drive a viewer: answers the hello, then speaks transport. */
export class TestDevice {
  constructor() {
    this.identity = generateIdentity();
    this.transport = null;
  }

  payload(secret = SECRET) {
    return { deviceId: this.identity.keyId, deviceKey: this.identity.publicKey, secret };
  }

  reply(helloFrame, secret = SECRET) {
    const frame = decodeFrame(helloFrame);
    const pairing = frame.type === FrameType.PAIR_HELLO;
    const handshake = HandshakeState.responder(pairing ? Pattern.IK_PSK2 : Pattern.IK, this.identity.privateKey, {
      prologue: prologue(frame.type),
      psk: pairing ? pskFromSecret(secret) : null,
    });
    handshake.readMessage(frame.body);
    this.viewerKey = handshake.remoteStatic;
    const reply = encodeFrame(FrameType.HANDSHAKE_REPLY, handshake.writeMessage());
    this.transport = handshake.transport();
    return reply;
  }

  send(message) {
    return encodeFrame(FrameType.TRANSPORT, this.transport.encrypt(encodeMessage(message)));
  }

  sendRaw(plaintext) {
    return encodeFrame(FrameType.TRANSPORT, this.transport.encrypt(plaintext));
  }

  read(frame) {
    const decoded = decodeFrame(frame);
    if (decoded.type === FrameType.ERROR) return { t: 'ERROR frame', code: frameErrorCode(decoded) };
    return decodeMessage(this.transport.decrypt(decoded.body));
  }
}
