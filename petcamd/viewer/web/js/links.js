// How the page reaches a camera: its LAN server's WebSocket (`ws://<host>:<port>/ws`, one frame per
// binary message) or a relay's viewer endpoint (`wss://<relay>/viewer`, frames inside envelopes).
// Both look the same to the rest of the page: a FrameLink that sends and receives petcamd frames
// of one session.
//
//   const link = await openLink(endpoint, deviceId, {timeoutMs});
//   link.onframe = (frame) => ...;      // Uint8Array
//   link.onclose = (end) => ...;        // {relayReason} from a relay CLOSE, or {wsCode}
//   link.send(frame); link.close();

import { CloseReason, decodeEnvelope, encodeClose, encodeConnect, encodeData, relayPageOrigin, relayViewerUrl } from './relay-envelope.js';

export const LAN_PATH = '/ws';

/** The session's connection id on a relay WebSocket: one session per WebSocket, so always 1. */
const CONN_ID = 1;

function lanUrl(host, port) {
  return host.includes(':') ? `ws://[${host}]:${port}${LAN_PATH}` : `ws://${host}:${port}${LAN_PATH}`;
}

/**
 * Where to try to reach `device`, best first, as [{kind: 'lan'|'relay', url}].
 *   device: {addresses, port, relayUrl, lastEndpoint}
 *   page:   {origin, protocol, host, isDevice}: the page's location, and whether the server that
 *           served it is this very camera (its /healthz names the device id).
 * A page served by the camera talks to the server it came from (its address may have changed since
 * pairing, the page's may not), and to nothing else on the LAN: the camera's Content-Security-Policy
 * allows WebSockets only to the host the page came from (and to its relay). A page on the relay's
 * https origin talks to that relay; another http page tries the camera's LAN addresses. An https
 * page cannot open ws:// (mixed content). The endpoint that worked last time goes first.
 */
export function endpointsFor(device, page) {
  const out = [];
  const add = (kind, url) => {
    if (!out.some((e) => e.url === url)) out.push({ kind, url });
  };
  const wsScheme = page.protocol === 'https:' ? 'wss:' : 'ws:';
  let relayOrigin = null;
  let relayUrl = null;
  if (device.relayUrl) {
    try {
      relayOrigin = relayPageOrigin(device.relayUrl);
      relayUrl = relayViewerUrl(device.relayUrl);
    } catch {
      relayOrigin = null;
    }
  }
  if (page.isDevice) add('lan', `${wsScheme}//${page.host}${LAN_PATH}`);
  if (relayUrl && relayOrigin === page.origin) add('relay', relayUrl);
  if (page.protocol === 'http:' && !page.isDevice) {
    for (const address of device.addresses ?? []) add('lan', lanUrl(address, device.port));
  }
  if (relayUrl && !(page.protocol === 'https:' && relayUrl.startsWith('ws:'))) add('relay', relayUrl);
  const last = device.lastEndpoint;
  const index = out.findIndex((e) => e.url === last);
  if (index > 0) out.unshift(...out.splice(index, 1));
  return out;
}

/** The WebSocket could not be opened (refused, timed out, blocked by the page's policy). */
export class LinkError extends Error {
  constructor(message) {
    super(message);
    this.name = 'LinkError';
  }
}

function openSocket(url, timeoutMs) {
  return new Promise((resolve, reject) => {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      // A URL the Content-Security-Policy does not allow, or a malformed one.
      reject(new LinkError(`cannot open ${url}: ${error.name}`));
      return;
    }
    ws.binaryType = 'arraybuffer';
    const timer = setTimeout(() => {
      cleanup();
      ws.close();
      reject(new LinkError(`${url} did not answer in time`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      ws.onopen = ws.onerror = ws.onclose = null;
    };
    ws.onopen = () => {
      cleanup();
      resolve(ws);
    };
    ws.onerror = ws.onclose = () => {
      cleanup();
      reject(new LinkError(`cannot reach ${url}`));
    };
  });
}

/** Frames of one session straight over the camera's WebSocket. */
class LanLink {
  onframe = null;
  onclose = null;
  iceServers = []; // on the LAN: host candidates only, nothing leaves the network
  #ws;
  #closed = false;

  constructor(ws, endpoint) {
    this.#ws = ws;
    this.endpoint = endpoint;
    ws.onmessage = (event) => {
      if (this.#closed) return;
      // A text message is not a frame: hand it on as such, the channel ends itself.
      this.onframe?.(typeof event.data === 'string' ? event.data : new Uint8Array(event.data));
    };
    ws.onclose = (event) => this.#ended({ wsCode: event.code });
  }

  send(frame) {
    if (!this.#closed && this.#ws.readyState === WebSocket.OPEN) this.#ws.send(frame);
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#ws.close(1000);
  }

  #ended(end) {
    if (this.#closed) return;
    this.#closed = true;
    this.onclose?.(end);
  }
}

/** Frames of one session inside relay envelopes: CONNECT first, then DATA both ways, CLOSE at the end. */
class RelayLink {
  onframe = null;
  onclose = null;
  iceServers = []; // what the relay offers (STUN, TURN with short-lived credentials)
  #ws;
  #closed = false;

  constructor(ws, endpoint, deviceId) {
    this.#ws = ws;
    this.endpoint = endpoint;
    ws.onmessage = (event) => this.#received(event.data);
    ws.onclose = (event) => this.#ended({ wsCode: event.code });
    ws.send(encodeConnect(CONN_ID, deviceId));
  }

  send(frame) {
    if (!this.#closed && this.#ws.readyState === WebSocket.OPEN) this.#ws.send(encodeData(CONN_ID, frame));
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(encodeClose(CONN_ID));
    this.#ws.close(1000);
  }

  #received(data) {
    if (this.#closed) return;
    let envelope;
    try {
      envelope = decodeEnvelope(typeof data === 'string' ? new Uint8Array(0) : data);
    } catch {
      this.#ended({ relayReason: CloseReason.UNKNOWN });
      this.#ws.close(4000, 'bad envelope');
      return;
    }
    if (envelope.type === 'ice-servers') {
      this.iceServers = envelope.servers; // for the peer connections of the sessions to come
      return;
    }
    if (envelope.connId !== CONN_ID) return; // nothing else is ours
    if (envelope.type === 'data') {
      this.onframe?.(envelope.frame);
    } else if (envelope.type === 'close') {
      this.#ended({ relayReason: envelope.reason });
      this.#ws.close(1000);
    } else {
      this.#ended({ relayReason: CloseReason.UNKNOWN });
      this.#ws.close(4000, 'bad envelope');
    }
  }

  #ended(end) {
    if (this.#closed) return;
    this.#closed = true;
    this.onclose?.(end);
  }
}

/** A FrameLink to `endpoint` ({kind, url}) for a session with `deviceId`; rejects with LinkError. */
export async function openLink(endpoint, deviceId, { timeoutMs = 5000 } = {}) {
  const ws = await openSocket(endpoint.url, timeoutMs);
  return endpoint.kind === 'relay' ? new RelayLink(ws, endpoint, deviceId) : new LanLink(ws, endpoint);
}

/**
 * Whether the server that served this page is the camera `deviceId` (its /healthz names it). The
 * relay's /healthz names no device. Any failure means no.
 */
export async function pageServedBy(deviceId, { timeoutMs = 3000 } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch('/healthz', { cache: 'no-store', signal: controller.signal, credentials: 'omit' });
    if (!response.ok) return false;
    const body = await response.json();
    return body?.device_id === deviceId;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}
