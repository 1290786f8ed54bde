// Plays the web viewer's side for tests/test_web_crypto.py, which drives the Python DeviceChannel:
// the JS ViewerChannel and the Python device exchange their frames through this process's stdin
// and stdout. One JSON request per input line, one JSON answer per output line; frames and keys
// are hex strings.
//
//   {"op": "identity"}                          -> {"ok": true, "publicKey", "keyId"}
//   {"op": "pair", "url", "name"}                -> outputs of a new pairing channel (the hello)
//   {"op": "session", "deviceKey"}               -> outputs of a new session channel (the hello)
//   {"op": "feed", "frame"}                      -> outputs of feeding one received frame
//   {"op": "send", "message": {...}}             -> {"ok": true, "frame"}
//   {"op": "close", "code": n | null}            -> outputs
//   {"op": "decode", "inputs": [hex, ...]}       -> {"ok": true, "results": [hex | null, ...]}
//        each inner message decoded and encoded again (null: rejected), to compare parsers
//   {"op": "url", "url"}                         -> {"ok": true, "payload": {...}} (hex bytes)
//
// An exception becomes {"ok": false, "error": name, "message": text}. The process holds one
// viewer identity for its whole life, so a session after a pairing uses the paired key.

import readline from 'node:readline';

import { bytesToHex, hexToBytes } from '../../petcamd/viewer/web/js/bytes.js';
import { ViewerChannel } from '../../petcamd/viewer/web/js/channel.js';
import { generateIdentity } from '../../petcamd/viewer/web/js/identity.js';
import { decodeMessage, encodeMessage } from '../../petcamd/viewer/web/js/messages.js';
import { decodePairingUrl } from '../../petcamd/viewer/web/js/pairing-url.js';

const identity = generateIdentity();
let channel = null;

/** Outputs as JSON: byte fields in hex. */
function outputs(list) {
  return list.map((output) => {
    if (output.kind === 'send') return { kind: 'send', data: bytesToHex(output.data) };
    if (output.kind === 'ready') return { ...output, deviceKey: bytesToHex(output.deviceKey) };
    return output;
  });
}

function tryDecode(hex) {
  try {
    return bytesToHex(encodeMessage(decodeMessage(hexToBytes(hex))));
  } catch {
    return null;
  }
}

const OPS = {
  identity: () => ({ publicKey: bytesToHex(identity.publicKey), keyId: identity.keyId }),
  pair({ url, name }) {
    channel = ViewerChannel.forPairing(identity.privateKey, decodePairingUrl(url), name);
    return { outputs: [{ kind: 'send', data: bytesToHex(channel.start()) }] };
  },
  session({ deviceKey }) {
    channel = ViewerChannel.forSession(identity.privateKey, hexToBytes(deviceKey));
    return { outputs: [{ kind: 'send', data: bytesToHex(channel.start()) }] };
  },
  feed: ({ frame }) => ({ outputs: outputs(channel.feed(hexToBytes(frame))) }),
  send: ({ message }) => ({ frame: bytesToHex(channel.send(message)) }),
  close: ({ code }) => ({ outputs: outputs(channel.close(code ?? null)) }),
  decode: ({ inputs }) => ({ results: inputs.map(tryDecode) }),
  url({ url }) {
    const payload = decodePairingUrl(url);
    return { payload: { ...payload, deviceKey: bytesToHex(payload.deviceKey), secret: bytesToHex(payload.secret) } };
  },
};

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  let answer;
  try {
    const request = JSON.parse(line);
    if (!Object.hasOwn(OPS, request.op)) throw new TypeError(`unknown op ${request.op}`);
    answer = { ok: true, ...OPS[request.op](request) };
  } catch (error) {
    answer = { ok: false, error: error.name, message: error.message };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
