// The pairing URL shown as a QR code (docs/protocol.md §8, petcamd/protocol/pairing_url.py).
//
//   <origin>/#v=1&id=<device id>&k=<key>&s=<secret>&e=<expiry>&a=<addresses>&p=<port>&r=<relay>&n=<name>
//
// Everything is in the fragment, which browsers never send to a server, so the one-time secret
// stays between the display and the phone that scanned it. k and s are unpadded base64url; e is
// Unix seconds (informative only: the device enforces expiry on its own clock); a is a
// comma-separated list of IP addresses; r and n are percent-encoded.
//
// Parsing follows the Python decoder; where that one is lenient about things the daemon never
// writes (stray percent signs, "+12" or "1_000" as numbers, IPv6 zone ids) this one refuses them.

import { base64urlToBytes, codePointLength } from './bytes.js';

export const VERSION = 1;
export const PUBLIC_KEY_LEN = 32;
export const MIN_SECRET_LEN = 16;
export const MAX_URL_LEN = 512;
export const MAX_NAME_LEN = 64;
const DEVICE_ID = /^[a-z2-7]{16}$/;
const DIGITS = /^[0-9]{1,15}$/;

/** The URL is not a petcamd pairing URL this version understands. */
export class PairingUrlError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PairingUrlError';
  }
}

/** application/x-www-form-urlencoded decoding of one name or value: '+' is a space. */
function formDecode(text) {
  try {
    return decodeURIComponent(text.replaceAll('+', ' '));
  } catch {
    throw new PairingUrlError('malformed pairing fragment');
  }
}

const IPV4 = /^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$/;

/** A literal IPv4 (dotted quad, no leading zeros) or IPv6 address, as Python's ip_address takes. */
export function isIpAddress(text) {
  if (IPV4.test(text)) return true;
  if (!text.includes(':') || !/^[0-9a-fA-F:.]+$/.test(text)) return false;
  // An embedded IPv4 part (::ffff:192.0.2.1) must be a strict dotted quad too.
  const tail = text.slice(text.lastIndexOf(':') + 1);
  if (tail.includes('.') && !IPV4.test(tail)) return false;
  try {
    new URL(`http://[${text}]/`); // the WHATWG URL parser implements the IPv6 grammar exactly
    return true;
  } catch {
    return false;
  }
}

/**
 * Parses a pairing URL (the whole URL, e.g. location.href) into
 * {deviceId, deviceKey, secret, expiresAt, addresses, port, relayUrl, name}, with deviceKey and
 * secret as Uint8Arrays. Throws PairingUrlError. It does not check that deviceId is the key id of
 * deviceKey: ViewerChannel.forPairing does, before anything is sent.
 */
export function decodePairingUrl(url) {
  if (typeof url !== 'string') throw new TypeError('the pairing URL is a string');
  if (url.length > MAX_URL_LEN) throw new PairingUrlError('pairing URL too long');
  const hash = url.indexOf('#');
  if (hash < 0) throw new PairingUrlError('pairing URL has no fragment');
  const fields = new Map();
  for (const part of url.slice(hash + 1).split('&')) {
    const equals = part.indexOf('=');
    if (equals < 0) throw new PairingUrlError('malformed pairing fragment');
    const key = formDecode(part.slice(0, equals));
    if (fields.has(key)) throw new PairingUrlError('repeated field in pairing fragment');
    fields.set(key, formDecode(part.slice(equals + 1)));
  }
  if (fields.get('v') !== String(VERSION)) throw new PairingUrlError('unsupported pairing URL version');
  for (const key of ['id', 'k', 's', 'e', 'p']) {
    if (!fields.has(key)) throw new PairingUrlError(`pairing URL lacks field '${key}'`);
  }
  const deviceId = fields.get('id');
  let deviceKey;
  let secret;
  try {
    deviceKey = base64urlToBytes(fields.get('k'));
    secret = base64urlToBytes(fields.get('s'));
  } catch {
    throw new PairingUrlError('invalid base64url');
  }
  if (!DIGITS.test(fields.get('e')) || !DIGITS.test(fields.get('p'))) {
    throw new PairingUrlError('malformed number in pairing URL');
  }
  const expiresAt = Number(fields.get('e'));
  const port = Number(fields.get('p'));
  const addresses = (fields.get('a') ?? '').split(',').filter((address) => address !== '');
  if (!DEVICE_ID.test(deviceId)) throw new PairingUrlError('malformed device id');
  if (deviceKey.length !== PUBLIC_KEY_LEN) throw new PairingUrlError('device key must be 32 bytes');
  if (secret.length < MIN_SECRET_LEN) throw new PairingUrlError('pairing secret too short');
  if (!(port > 0 && port < 65536)) throw new PairingUrlError('port or expiry out of range');
  for (const address of addresses) {
    if (!isIpAddress(address)) throw new PairingUrlError('malformed address');
  }
  const name = fields.get('n') ?? '';
  if (codePointLength(name) > MAX_NAME_LEN) throw new PairingUrlError('device name too long');
  return Object.freeze({
    deviceId,
    deviceKey,
    secret,
    expiresAt,
    addresses: Object.freeze(addresses),
    port,
    relayUrl: fields.get('r') ?? '',
    name,
  });
}
