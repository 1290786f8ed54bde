// The viewer's memory, in this origin's IndexedDB: its own key pair and the cameras it paired with.
//
// Storage belongs to the page's origin, so the camera's own page (http://<address>:<port>) and a
// relay's page (https://relay...) each keep their own key and their own list of cameras.
//
// Records:
//   identity 'self': {privateKey: Uint8Array(32), publicKey: Uint8Array(32), keyId, createdAt}
//   devices <deviceId>: {deviceId, deviceKey: Uint8Array(32), peerId, name, addresses: [..],
//                        port, relayUrl, pairedAt, lastUsedAt, lastEndpoint}

import { generateIdentity, keyId } from './identity.js';
import { publicKey } from './noise.js';

const DB_NAME = 'petcam-viewer';
const DB_VERSION = 1;
const IDENTITY = 'identity';
const DEVICES = 'devices';
const SELF = 'self';

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(transaction) {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve();
    transaction.onerror = () => reject(transaction.error);
    transaction.onabort = () => reject(transaction.error ?? new Error('storage transaction aborted'));
  });
}

export class ViewerStore {
  #db;

  constructor(db) {
    this.#db = db;
  }

  /** Opens (and on first use creates) this origin's database. */
  static async open(name = DB_NAME) {
    if (typeof indexedDB === 'undefined') throw new Error('this browser offers no IndexedDB storage');
    const req = indexedDB.open(name, DB_VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains(IDENTITY)) db.createObjectStore(IDENTITY);
      if (!db.objectStoreNames.contains(DEVICES)) db.createObjectStore(DEVICES, { keyPath: 'deviceId' });
    };
    const db = await request(req);
    // Another tab upgrading the schema later: let it, this tab reloads its data on next use.
    db.onversionchange = () => db.close();
    return new ViewerStore(db);
  }

  /**
   * This browser's key pair, made on first use. Made and stored inside one transaction, so two tabs
   * opening at once end up with the same key.
   */
  async identity() {
    const tx = this.#db.transaction(IDENTITY, 'readwrite');
    const store = tx.objectStore(IDENTITY);
    let record = await request(store.get(SELF));
    if (!isIdentity(record)) {
      const fresh = generateIdentity();
      record = { privateKey: fresh.privateKey, publicKey: fresh.publicKey, keyId: fresh.keyId, createdAt: Date.now() };
      store.put(record, SELF);
    }
    await done(tx);
    return Object.freeze({ ...record });
  }

  /** Paired cameras, most recently used first. */
  async devices() {
    const tx = this.#db.transaction(DEVICES, 'readonly');
    const all = await request(tx.objectStore(DEVICES).getAll());
    return all.filter(isDevice).sort((a, b) => (b.lastUsedAt ?? b.pairedAt) - (a.lastUsedAt ?? a.pairedAt));
  }

  async device(deviceId) {
    const tx = this.#db.transaction(DEVICES, 'readonly');
    const record = await request(tx.objectStore(DEVICES).get(deviceId));
    return isDevice(record) ? record : null;
  }

  /** Stores a camera (a new pairing replaces an older one of the same camera). */
  async putDevice(device) {
    if (!isDevice(device)) throw new TypeError('not a paired camera record');
    const tx = this.#db.transaction(DEVICES, 'readwrite');
    tx.objectStore(DEVICES).put(device);
    await done(tx);
  }

  /** Merges `changes` into a stored camera, e.g. {lastUsedAt, lastEndpoint}; no-op if it is gone. */
  async updateDevice(deviceId, changes) {
    const tx = this.#db.transaction(DEVICES, 'readwrite');
    const store = tx.objectStore(DEVICES);
    const record = await request(store.get(deviceId));
    if (isDevice(record)) store.put({ ...record, ...changes, deviceId });
    await done(tx);
  }

  /** Forgets a camera. Only ever on the owner's explicit request, never because of an error. */
  async removeDevice(deviceId) {
    const tx = this.#db.transaction(DEVICES, 'readwrite');
    tx.objectStore(DEVICES).delete(deviceId);
    await done(tx);
  }
}

function isKey(value) {
  return value instanceof Uint8Array && value.length === 32;
}

function isIdentity(record) {
  if (!record || !isKey(record.privateKey) || !isKey(record.publicKey)) return false;
  // A record whose halves do not belong together is useless: make a new one.
  const derived = publicKey(record.privateKey);
  return derived.every((byte, i) => byte === record.publicKey[i]) && keyId(record.publicKey) === record.keyId;
}

function isDevice(record) {
  return Boolean(record) && typeof record.deviceId === 'string' && isKey(record.deviceKey) && Array.isArray(record.addresses);
}
