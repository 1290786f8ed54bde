// Long-term X25519 identities (petcamd/secure/identity.py): the viewer's own key pair and the
// short key ids that name keys to people.

import { sha256 } from '../vendor/noble-hashes/sha2.js';
import { bytesToBase32, concatBytes, utf8Encode } from './bytes.js';
import { generatePrivateKey, publicKey } from './noise.js';

export const KEY_SIZE = 32;
export const KEY_ID_LENGTH = 16;
const KEY_ID_CONTEXT = utf8Encode('petcamd key id v1');

/**
 * Short stable name of a public key: the device's routing id and a viewer's peer id.
 * 80 bits of SHA-256("petcamd key id v1" || key) in lowercase base32.
 */
export function keyId(publicKeyBytes) {
  if (!(publicKeyBytes instanceof Uint8Array) || publicKeyBytes.length !== KEY_SIZE) {
    throw new TypeError(`an X25519 public key is ${KEY_SIZE} bytes`);
  }
  return bytesToBase32(sha256(concatBytes(KEY_ID_CONTEXT, publicKeyBytes))).slice(0, KEY_ID_LENGTH);
}

/** A new viewer identity: {privateKey, publicKey, keyId}. Keep privateKey on this device only. */
export function generateIdentity() {
  const privateKey = generatePrivateKey();
  const publicKeyBytes = publicKey(privateKey);
  return { privateKey, publicKey: publicKeyBytes, keyId: keyId(publicKeyBytes) };
}
