// Small byte helpers shared by the viewer's modules: hex and base64url text, UTF-8, comparison.
// Everything here works on plain Uint8Array; nothing needs a secure context.

/** Concatenation of Uint8Arrays into a new one. */
export function concatBytes(...parts) {
  const out = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** True if `a` and `b` hold the same bytes. Not constant-time: only for public values. */
export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function bytesToHex(bytes) {
  let text = '';
  for (const byte of bytes) text += byte.toString(16).padStart(2, '0');
  return text;
}

/** Lowercase or uppercase hex, even length, nothing else; throws TypeError otherwise. */
export function hexToBytes(text) {
  if (typeof text !== 'string' || text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) {
    throw new TypeError('not a hex string');
  }
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Unpadded base64url (RFC 4648 §5), as the pairing URL and stored keys use it. */
export function bytesToBase64url(bytes) {
  let text = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const chunk = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    const chars = Math.min(4, Math.ceil(((bytes.length - i) * 8) / 6));
    for (let j = 0; j < chars; j++) text += B64URL[(chunk >> (18 - 6 * j)) & 63];
  }
  return text;
}

/**
 * Decodes unpadded base64url. Throws TypeError for any other character or an impossible length
 * (4n+1 characters). Like Python's decoder, unused low bits of the last character are ignored.
 */
export function base64urlToBytes(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw new TypeError('not unpadded base64url');
  }
  const out = new Uint8Array(Math.floor((text.length * 6) / 8));
  let bits = 0;
  let value = 0;
  let index = 0;
  for (const char of text) {
    value = (value << 6) | B64URL.indexOf(char);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[index++] = (value >> bits) & 0xff;
    }
  }
  return out;
}

/** RFC 4648 base32 alphabet, as Python's base64.b32encode (used for key ids, in lowercase). */
const B32 = 'abcdefghijklmnopqrstuvwxyz234567';

export function bytesToBase32(bytes) {
  let text = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = ((value << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      text += B32[(value >> bits) & 31];
    }
  }
  if (bits > 0) text += B32[(value << (5 - bits)) & 31];
  return text;
}

const ENCODER = new TextEncoder();
// fatal: invalid UTF-8 throws; ignoreBOM: a leading U+FEFF stays in the text so that the strict
// JSON parser rejects it, instead of being dropped silently.
const DECODER = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** UTF-8 of a string; lone surrogates must have been rejected before (see isWellFormedText). */
export const utf8Encode = (text) => ENCODER.encode(text);

/** Strict UTF-8 decoding; throws TypeError on invalid input. */
export const utf8Decode = (bytes) => DECODER.decode(bytes);

/** False if `text` holds a lone UTF-16 surrogate (not valid Unicode, cannot be UTF-8). */
export function isWellFormedText(text) {
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = text.charCodeAt(i + 1);
      if (!(next >= 0xdc00 && next <= 0xdfff)) return false;
      i++;
    } else if (unit >= 0xdc00 && unit <= 0xdfff) {
      return false;
    }
  }
  return true;
}

/** Length in Unicode code points, as Python's len(str) counts it. */
export function codePointLength(text) {
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    count++;
  }
  return count;
}

/** `length` bytes from the platform's CSPRNG: crypto.getRandomValues exists on plain-http origins too. */
export function randomBytes(length) {
  return globalThis.crypto.getRandomValues(new Uint8Array(length));
}
