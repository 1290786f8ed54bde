// The viewer's end of the secure channel (petcamd/secure/channel.py, ViewerChannel), as a
// sans-IO state machine: no WebSocket in here, so the page, the tests and the interop driver all
// run the same object.
//
//   const channel = ViewerChannel.forPairing(privateKey, decodePairingUrl(location.href), 'Anna');
//   ws.send(channel.start());                          // the hello frame
//   ws.onmessage = (e) => perform(channel.feed(e.data)); // ArrayBuffer or Uint8Array
//   ws.send(channel.send({t: 'offer', sdp}));          // once a 'ready' output came
//
// feed() returns outputs to act on in order; it never throws for anything the peer sent: every
// bad frame closes the channel.
//   {kind: 'send', data}        send `data` as one binary WebSocket message
//   {kind: 'ready', deviceKey, peerId, deviceName}
//                               the device proved its key; send() works now. After a pairing,
//                               peerId and deviceName are what the device sent in `paired`: store
//                               them with deviceKey to open sessions later (null in a session)
//   {kind: 'received', message} an authenticated inner message (a ping is answered in here)
//   {kind: 'closed', code, byPeer, verified, remoteReason}
//                               the channel ended; close the WebSocket after sending what came
//                               before. code: an ErrorCode number, or null for an orderly end.
//                               verified: false if the code came in a plaintext ERROR frame, which
//                               anyone on the path can forge (show it, never act on it beyond
//                               that: never forget a pairing because of it) or the connection
//                               dropped. remoteReason: the device's authenticated reason text,
//                               for display only.

import { concatBytes, utf8Encode } from './bytes.js';
import { keyId } from './identity.js';
import {
  ERROR_DESCRIPTIONS,
  ErrorCode,
  FrameType,
  ProtocolError,
  Role,
  decodeFrame,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  errorFrame,
  frameErrorCode,
  message,
  prologue,
  sentBy,
} from './messages.js';
import { HandshakeState, NoiseError, Pattern } from './noise.js';
import { sha256 } from '../vendor/noble-hashes/sha2.js';

const PSK_LABEL = utf8Encode('petcamd pairing psk v1');

/** The IKpsk2 pre-shared key of a pairing: SHA-256("petcamd pairing psk v1" || secret). */
export const pskFromSecret = (secret) => sha256(concatBytes(PSK_LABEL, secret));

/** send() on a channel that has ended (the peer may have closed it in the meantime). */
export class ChannelClosedError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ChannelClosedError';
  }
}

const State = Object.freeze({
  START: 'start', // hello not written yet
  REPLY: 'reply', // waiting for HANDSHAKE_REPLY
  PAIRED: 'paired', // `pair` sent, waiting for `paired`
  OPEN: 'open',
  CLOSED: 'closed',
});

const sendOutput = (data) => Object.freeze({ kind: 'send', data });

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return null; // e.g. a text WebSocket message: not a frame
}

export class ViewerChannel {
  #state = State.START;
  #deviceKey;
  #pairMessage;
  #helloType;
  #handshake;
  #transport = null;
  // True once the device has proven its keys, so errors can go inside the encrypted channel.
  #proven = false;

  /** Use ViewerChannel.forPairing() or ViewerChannel.forSession(). */
  constructor(staticPrivate, deviceKey, { pairingPsk, viewerName, ephemeral }) {
    this.#deviceKey = Uint8Array.from(deviceKey);
    this.#pairMessage = viewerName == null ? null : message({ t: 'pair', name: viewerName });
    this.#helloType = pairingPsk == null ? FrameType.SESSION_HELLO : FrameType.PAIR_HELLO;
    this.#handshake = HandshakeState.initiator(
      pairingPsk == null ? Pattern.IK : Pattern.IK_PSK2,
      staticPrivate,
      this.#deviceKey,
      { prologue: prologue(this.#helloType), psk: pairingPsk, ephemeral },
    );
  }

  /**
   * Pairs with the device of a scanned pairing URL (decodePairingUrl's result); `viewerName` is
   * what the owner sees in `petcamctl peers`. Throws ProtocolError if the name is invalid or the
   * URL's device id is not its key's id. `ephemeral` only makes examples reproducible.
   */
  static forPairing(staticPrivate, payload, viewerName, { ephemeral = null } = {}) {
    if (payload.deviceKey?.length !== 32 || keyId(payload.deviceKey) !== payload.deviceId) {
      throw new ProtocolError("the pairing URL's device id does not match its key");
    }
    return new ViewerChannel(staticPrivate, payload.deviceKey, {
      pairingPsk: pskFromSecret(payload.secret),
      viewerName,
      ephemeral,
    });
  }

  /** Opens a session with a device this viewer paired with (deviceKey from storage). */
  static forSession(staticPrivate, deviceKey, { ephemeral = null } = {}) {
    return new ViewerChannel(staticPrivate, deviceKey, { pairingPsk: null, viewerName: null, ephemeral });
  }

  get deviceKey() {
    return Uint8Array.from(this.#deviceKey);
  }

  get isPairing() {
    return this.#helloType === FrameType.PAIR_HELLO;
  }

  /** Authenticated and not closed: send() works. */
  get isOpen() {
    return this.#state === State.OPEN;
  }

  get isClosed() {
    return this.#state === State.CLOSED;
  }

  /** For logs and the UI's debug view: never shows keys. */
  get state() {
    return this.#state;
  }

  /** The hello frame to send first; call exactly once. */
  start() {
    if (this.#state !== State.START) throw new Error('start() was called already');
    this.#state = State.REPLY;
    return encodeFrame(this.#helloType, this.#handshake.writeMessage());
  }

  /**
   * One TRANSPORT frame carrying the inner message `fields`, e.g. {t: 'offer', sdp}.
   * Throws ChannelClosedError after the channel ended, Error before it is open, TypeError for a
   * type the viewer may not send, ProtocolError for an invalid or oversized message.
   */
  send(fields) {
    if (this.#state === State.CLOSED) throw new ChannelClosedError('the channel is closed');
    if (this.#state !== State.OPEN) throw new Error('the channel is not authenticated yet');
    const t = fields?.t;
    if (!(sentBy(t) & Role.VIEWER) || t === 'pair' || t === 'paired') {
      throw new TypeError(`the viewer does not send '${t}' messages`);
    }
    return this.#encrypt(fields);
  }

  /** Processes one received frame (Uint8Array or ArrayBuffer) and returns the outputs. */
  feed(data) {
    if (this.#state === State.CLOSED) return [];
    if (this.#state === State.START) throw new Error('call start() and send its frame first');
    const bytes = toBytes(data);
    let frame;
    try {
      if (bytes === null) throw new ProtocolError('not a binary frame');
      frame = decodeFrame(bytes);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      return this.close(ErrorCode.BAD_MESSAGE);
    }
    if (frame.type === FrameType.ERROR) {
      return this.#end(frameErrorCode(frame), { byPeer: true, verified: false });
    }
    if (this.#state === State.REPLY && frame.type === FrameType.HANDSHAKE_REPLY) return this.#reply(frame);
    if (this.#state === State.PAIRED && frame.type === FrameType.TRANSPORT) return this.#paired(frame);
    if (this.#state === State.OPEN) return this.#openFrame(frame);
    return this.close(ErrorCode.BAD_MESSAGE);
  }

  /** Ends the channel: tells the device (`error` or `bye`) when possible, then a 'closed' output. */
  close(code = null) {
    if (this.#state === State.CLOSED) return [];
    const outputs = [];
    if (this.#proven && this.#transport !== null) {
      const farewell = code === null ? { t: 'bye' } : { t: 'error', code, reason: ERROR_DESCRIPTIONS[code] ?? '' };
      outputs.push(sendOutput(this.#encrypt(farewell)));
    } else if (code !== null) {
      outputs.push(sendOutput(errorFrame(code)));
    }
    return [...outputs, ...this.#end(code, { byPeer: false, verified: true })];
  }

  /** The WebSocket went away; call this so the channel can account for it. */
  connectionLost() {
    if (this.#state === State.CLOSED) return [];
    return this.#end(null, { byPeer: true, verified: false });
  }

  #reply(frame) {
    try {
      this.#handshake.readMessage(frame.body); // fixed length: the payload is empty
    } catch (error) {
      if (!(error instanceof NoiseError)) throw error;
      // In a pairing this means the wrong pairing code or device key: the device counts it.
      return this.close(this.isPairing ? ErrorCode.PAIRING_FAILED : ErrorCode.BAD_MESSAGE);
    }
    this.#transport = this.#handshake.transport();
    this.#handshake = null;
    this.#proven = true;
    if (this.#pairMessage !== null) {
      this.#state = State.PAIRED;
      return [sendOutput(this.#encrypt(this.#pairMessage))];
    }
    this.#state = State.OPEN;
    return [this.#ready(null, null)];
  }

  #paired(frame) {
    let msg;
    try {
      msg = this.#decrypt(frame);
    } catch (error) {
      return this.#rejected(error);
    }
    if (msg.t === 'paired') {
      this.#state = State.OPEN;
      return [this.#ready(msg.peerId, msg.name)];
    }
    if (msg.t === 'bye' || msg.t === 'error') return this.#deliver(msg);
    return this.close(ErrorCode.BAD_MESSAGE);
  }

  #openFrame(frame) {
    let msg;
    try {
      msg = this.#decrypt(frame);
    } catch (error) {
      return this.#rejected(error);
    }
    return this.#deliver(msg);
  }

  #rejected(error) {
    if (!(error instanceof NoiseError || error instanceof ProtocolError)) throw error;
    return this.close(ErrorCode.BAD_MESSAGE);
  }

  #deliver(msg) {
    if (!(sentBy(msg.t) & Role.DEVICE) || msg.t === 'pair' || msg.t === 'paired') {
      return this.close(ErrorCode.BAD_MESSAGE);
    }
    if (msg.t === 'ping') return [sendOutput(this.#encrypt({ t: 'pong', seq: msg.seq }))];
    if (msg.t === 'bye') return this.#end(null, { byPeer: true, verified: true });
    if (msg.t === 'error') {
      return this.#end(msg.code, { byPeer: true, verified: true, remoteReason: msg.reason });
    }
    return [Object.freeze({ kind: 'received', message: msg })];
  }

  #ready(peerId, deviceName) {
    return Object.freeze({ kind: 'ready', deviceKey: this.deviceKey, peerId, deviceName });
  }

  #end(code, { byPeer, verified, remoteReason = '' }) {
    this.#state = State.CLOSED;
    this.#transport = null;
    this.#handshake = null;
    return [Object.freeze({ kind: 'closed', code, byPeer, verified, remoteReason })];
  }

  #encrypt(fields) {
    if (this.#transport === null) throw new Error('no transport keys');
    return encodeFrame(FrameType.TRANSPORT, this.#transport.encrypt(encodeMessage(fields)));
  }

  /** Throws NoiseError (wrong keys, tampering, replay) or ProtocolError (bad content). */
  #decrypt(frame) {
    if (frame.type !== FrameType.TRANSPORT) throw new ProtocolError('unexpected frame');
    if (this.#transport === null) throw new Error('no transport keys');
    return decodeMessage(this.#transport.decrypt(frame.body));
  }
}
