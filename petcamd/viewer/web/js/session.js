// Pairing and watching: the browser's version of petcamd/viewer/client.py.
//
// pairWithCamera() runs the IKpsk2 pairing over the first endpoint that answers and returns the
// camera's record (to store) and the still-open channel, which continues as the first session.
// CameraWatch keeps one camera's live video going: a Noise IK session over a FrameLink, a
// receive-only RTCPeerConnection whose offer travels inside the channel, and, whenever anything
// breaks (network loss, the camera restarting, ICE failing, video stalling), a new session after a
// backoff. It asks the camera for a keyframe whenever the decoder needs one, since the camera's
// WebRTC stack does not pass the browser's own requests (RTCP PLI) on to the encoder.

import { ViewerChannel } from './channel.js';
import { LinkError, endpointsFor, openLink } from './links.js';
import { Problem, problemFor } from './problems.js';
import { summarize } from './stats.js';

export const WatchState = Object.freeze({
  CONNECTING: 'connecting', // first session being set up
  LIVE: 'live', // frames are being decoded
  STALLED: 'stalled', // connected, but no frame for a while
  RECONNECTING: 'reconnecting', // waiting to try again, or trying
  FAILED: 'failed', // stopped for good: the owner must act (revoked, not paired)
  STOPPED: 'stopped', // stopped on request
});

const HANDSHAKE_TIMEOUT_MS = 8000;
const ANSWER_TIMEOUT_MS = 15000;
const GATHER_TIMEOUT_MS = 2000;
const CONNECT_TIMEOUT_MS = 5000;
const STATS_INTERVAL_MS = 1000;
const KEYFRAME_MIN_INTERVAL_MS = 1000;
const FIRST_FRAME_KEYFRAME_MS = 1500; // no first frame yet: ask for an IDR
const STALL_KEYFRAME_MS = 2500; // frames stopped: ask for an IDR
const STALL_RECONNECT_MS = 10000; // still nothing: start over
const DISCONNECTED_RECONNECT_MS = 4000; // ICE disconnected this long: start over
const SILENCE_RECONNECT_MS = 50000; // the camera pings at least every 15 s while we are quiet
const LIVE_RESETS_BACKOFF_MS = 5000;
const BACKOFF_S = [0.5, 1, 1.5, 2, 3, 5, 8, 13, 20, 30];

/** A ViewerChannel over a FrameLink: the hello, the handshake, then inner messages both ways. */
export class SecureLink {
  onmessage = null;
  onend = null;
  ended = null;
  lastHeardAt = performance.now();
  #link;
  #channel;
  #linkEnd = null;
  #ready = null;

  constructor(link, channel) {
    this.#link = link;
    this.#channel = channel;
    link.onframe = (frame) => {
      this.lastHeardAt = performance.now();
      this.#perform(this.#channel.feed(frame));
    };
    link.onclose = (end) => {
      this.#linkEnd = end;
      this.#perform(this.#channel.connectionLost());
    };
  }

  get endpoint() {
    return this.#link.endpoint;
  }

  /** STUN/TURN servers for this session's peer connection: none on the LAN, the relay's through it. */
  get iceServers() {
    return this.#link.iceServers;
  }

  /** Sends the hello; resolves with the channel's 'ready' output, rejects with the end ({code, ...}). */
  open(timeoutMs = HANDSHAKE_TIMEOUT_MS) {
    const promise = new Promise((resolve, reject) => {
      this.#ready = { resolve, reject };
    });
    const timer = setTimeout(() => this.#finish({ code: null, verified: false, timeout: true }), timeoutMs);
    promise.then(
      () => clearTimeout(timer),
      () => clearTimeout(timer),
    );
    this.#link.send(this.#channel.start());
    return promise;
  }

  /** Sends one inner message, e.g. {t: 'offer', sdp}; false if the channel is over. */
  send(fields) {
    if (this.ended || !this.#channel.isOpen) return false;
    this.#link.send(this.#channel.send(fields));
    return true;
  }

  /** Ends the channel from this side (bye) and closes the link. */
  close() {
    if (this.ended) return;
    this.#perform(this.#channel.close());
    this.#finish({ code: null, verified: true, byUs: true });
  }

  #perform(outputs) {
    for (const output of outputs) {
      if (output.kind === 'send') this.#link.send(output.data);
      else if (output.kind === 'ready') this.#ready?.resolve(output);
      else if (output.kind === 'received') this.onmessage?.(output.message);
      else if (output.kind === 'closed') {
        this.#finish({ code: output.code, verified: output.verified, byPeer: output.byPeer, ...this.#linkEnd });
      }
    }
  }

  #finish(end) {
    if (this.ended) return;
    this.ended = end;
    if (!this.#channel.isClosed) this.#channel.connectionLost();
    this.#link.close();
    this.#ready?.reject(end);
    this.onend?.(end);
  }
}

/** No endpoint of the camera could be opened. */
export class CameraOfflineError extends Error {
  constructor(failures) {
    super(`the camera is not reachable (${failures.join('; ')})`);
    this.name = 'CameraOfflineError';
  }
}

async function firstLink(endpoints, deviceId) {
  const failures = [];
  for (const endpoint of endpoints) {
    try {
      return await openLink(endpoint, deviceId, { timeoutMs: CONNECT_TIMEOUT_MS });
    } catch (error) {
      if (!(error instanceof LinkError)) throw error;
      failures.push(error.message);
    }
  }
  throw new CameraOfflineError(failures.length ? failures : ['no address known']);
}

/**
 * Pairs with the camera of a pairing URL (decodePairingUrl's result).
 * Resolves with {device, secure}: the record to store, and the channel, open and authenticated, to
 * hand to CameraWatch as its first session. Rejects with a problem ({kind, title, text, final}).
 */
export async function pairWithCamera({ payload, viewerName, identity, page }) {
  const context = { pairing: true, cameraName: payload.name || 'The camera', expiresAt: payload.expiresAt };
  const endpoints = endpointsFor({ addresses: payload.addresses, port: payload.port, relayUrl: payload.relayUrl }, page);
  // Checks the name and that the URL's device id is its key's id before anything is sent.
  const channel = ViewerChannel.forPairing(identity.privateKey, payload, viewerName);
  let link;
  try {
    link = await firstLink(endpoints, payload.deviceId);
  } catch (error) {
    if (error instanceof CameraOfflineError) throw problemFor({ offline: true }, context);
    throw error;
  }
  const secure = new SecureLink(link, channel);
  let ready;
  try {
    ready = await secure.open();
  } catch (end) {
    const problem = problemFor(end, context);
    throw problem ?? problemFor({ offline: true }, context);
  }
  const now = Date.now();
  const device = {
    deviceId: payload.deviceId,
    deviceKey: Uint8Array.from(ready.deviceKey),
    peerId: ready.peerId,
    name: ready.deviceName || payload.name || payload.deviceId,
    addresses: [...payload.addresses],
    port: payload.port,
    relayUrl: payload.relayUrl,
    pairedAt: now,
    lastUsedAt: now,
    lastEndpoint: link.endpoint.url,
    // This origin is the camera's own page: remembered, so a reload while it restarts still knows.
    servedBy: page.isDevice ? page.origin : null,
  };
  return { device, secure };
}

function preferH264(transceiver) {
  const capabilities = globalThis.RTCRtpReceiver?.getCapabilities?.('video');
  if (!capabilities || typeof transceiver.setCodecPreferences !== 'function') return true;
  const h264 = capabilities.codecs.filter((c) => c.mimeType.toLowerCase() === 'video/h264');
  if (h264.length === 0) return false;
  // Constrained baseline with packetization mode 1 first: what camera encoders produce.
  const score = (c) => (/packetization-mode=1/.test(c.sdpFmtpLine ?? '') ? 0 : 2) + (/profile-level-id=42e0/.test(c.sdpFmtpLine ?? '') ? 0 : 1);
  h264.sort((a, b) => score(a) - score(b));
  const rtx = capabilities.codecs.filter((c) => c.mimeType.toLowerCase() === 'video/rtx');
  for (const codecs of [[...h264, ...rtx], h264]) {
    try {
      transceiver.setCodecPreferences(codecs);
      return true;
    } catch {
      // Some browsers refuse rtx in the list; try H.264 alone.
    }
  }
  return true;
}

function gatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(finish, timeoutMs);
    function finish() {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === 'complete') finish();
    }
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/**
 * Live video from one paired camera into `video`, kept going until stop().
 *   onchange({state, problem, stats, endpoint, retryInS}) is called on every change.
 * `page` is what endpointsFor() needs; `adopt` an open SecureLink from pairWithCamera().
 */
export class CameraWatch {
  #device;
  #identity;
  #video;
  #page;
  #onchange;
  #store;
  #generation = 0;
  #state = WatchState.CONNECTING;
  #problem = null;
  #stats = null;
  #endpoint = null;
  #failures = 0;
  #attempts = 0;
  #retryTimer = null;
  #retryAt = null;
  #current = null; // {secure, pc, statsTimer, ...} of the live attempt

  constructor({ device, identity, video, page, onchange, store = null }) {
    this.#device = device;
    this.#identity = identity;
    this.#video = video;
    this.#page = page;
    this.#onchange = onchange;
    this.#store = store;
    this.onOnline = () => this.retryNow();
    this.onVisible = () => {
      if (document.visibilityState === 'visible') this.retryNow();
    };
  }

  get device() {
    return this.#device;
  }

  get state() {
    return this.#state;
  }

  /** Starts watching; `adopt` is the open channel of a pairing that just completed. */
  start(adopt = null) {
    globalThis.addEventListener?.('online', this.onOnline);
    globalThis.document?.addEventListener('visibilitychange', this.onVisible);
    this.#run(adopt);
  }

  /** Ends the session (bye to the camera) and stops retrying. */
  stop() {
    globalThis.removeEventListener?.('online', this.onOnline);
    globalThis.document?.removeEventListener('visibilitychange', this.onVisible);
    this.#generation++;
    this.#clearRetry();
    this.#teardown();
    this.#set(WatchState.STOPPED, null);
  }

  /** Skips the wait of a pending retry (back online, page visible again, the owner's button). */
  retryNow() {
    if (this.#retryTimer === null) return;
    this.#clearRetry();
    this.#run(null);
  }

  #clearRetry() {
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#retryAt = null;
  }

  #set(state, problem = this.#problem) {
    this.#state = state;
    this.#problem = problem;
    this.#emit();
  }

  #emit() {
    const retryInS = this.#retryAt === null ? null : Math.max(0, Math.ceil((this.#retryAt - performance.now()) / 1000));
    this.#onchange?.({
      state: this.#state,
      problem: this.#problem,
      stats: this.#stats,
      endpoint: this.#endpoint,
      retryInS,
    });
  }

  async #run(adopt) {
    const generation = ++this.#generation;
    const reconnecting = this.#attempts > 0;
    this.#attempts++;
    this.#set(reconnecting ? WatchState.RECONNECTING : WatchState.CONNECTING);
    let secure = adopt;
    try {
      if (secure === null) {
        const link = await firstLink(endpointsFor(this.#device, this.#page), this.#device.deviceId);
        if (generation !== this.#generation) {
          link.close();
          return;
        }
        secure = new SecureLink(link, ViewerChannel.forSession(this.#identity.privateKey, this.#device.deviceKey));
        await secure.open();
      }
    } catch (error) {
      if (generation !== this.#generation) return;
      secure?.close();
      if (error instanceof CameraOfflineError) {
        this.#failed({ offline: true });
      } else if (error instanceof Error) {
        console.error('petcam: session setup failed', error); // a bug: still try again later
        this.#failed({ code: null, error: error.name });
      } else {
        this.#failed(error); // the channel's end
      }
      return;
    }
    if (generation !== this.#generation) {
      secure.close();
      return;
    }
    this.#endpoint = secure.endpoint;
    this.#store?.updateDevice(this.#device.deviceId, { lastEndpoint: secure.endpoint.url, lastUsedAt: Date.now() }).catch(() => {});
    await this.#negotiate(generation, secure, reconnecting);
  }

  async #negotiate(generation, secure, reconnecting) {
    const pc = new RTCPeerConnection({ iceServers: [...secure.iceServers], bundlePolicy: 'max-bundle' });
    const current = {
      secure,
      pc,
      statsTimer: null,
      answered: false,
      answeredAt: 0,
      lastProgressAt: 0,
      framesDecoded: 0,
      everLive: false,
      liveSince: null,
      lastKeyframeAt: -Infinity,
      keyframes: 0,
      pli: 0,
      disconnectedAt: null,
      previous: null,
    };
    this.#current = current;
    const answer = new Promise((resolve, reject) => {
      current.answerWaiter = { resolve, reject };
    });
    answer.catch(() => {}); // an end before the offer went out is handled by onend
    secure.onmessage = (message) => {
      if (message.t === 'answer') current.answerWaiter.resolve(message.sdp);
      // ice from the camera: aiortc puts its candidates in the answer and never trickles.
    };
    secure.onend = (end) => {
      current.answerWaiter.reject(end);
      if (generation === this.#generation) this.#failed(end);
    };
    if (secure.ended) {
      this.#failed(secure.ended);
      return;
    }
    const transceiver = pc.addTransceiver('video', { direction: 'recvonly' });
    if (!preferH264(transceiver)) {
      this.#fail(Problem.UNSUPPORTED, {
        kind: Problem.UNSUPPORTED,
        title: 'This browser cannot play the camera’s video',
        text: 'The camera sends H.264 video, which this browser does not decode. Try another browser.',
        final: true,
        unverified: false,
      });
      return;
    }
    pc.ontrack = (event) => {
      if (generation !== this.#generation) return;
      const video = this.#video;
      // Same element across reconnects: the last picture stays until the new one arrives.
      video.srcObject = event.streams?.[0] ?? new MediaStream([event.track]);
      video.play?.().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (generation !== this.#generation) return;
      if (pc.connectionState === 'failed') this.#failed({ code: null, iceFailed: true });
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringComplete(pc, GATHER_TIMEOUT_MS);
      if (generation !== this.#generation) return;
      if (!secure.send({ t: 'offer', sdp: pc.localDescription.sdp })) return;
      const sdp = await Promise.race([
        answer,
        new Promise((_, reject) => setTimeout(() => reject({ code: null, timeout: true }), ANSWER_TIMEOUT_MS)),
      ]);
      if (generation !== this.#generation) return;
      await pc.setRemoteDescription({ type: 'answer', sdp });
    } catch (error) {
      if (generation !== this.#generation) return;
      if (error instanceof Error) this.#failed({ code: null, error: error.name });
      else this.#failed(error);
      return;
    }
    if (generation !== this.#generation) return;
    current.answered = true;
    current.answeredAt = current.lastProgressAt = performance.now();
    if (reconnecting) this.#keyframe(current, 'reconnected');
    current.statsTimer = setInterval(() => this.#poll(generation, current), STATS_INTERVAL_MS);
  }

  #keyframe(current, _why) {
    const now = performance.now();
    if (now - current.lastKeyframeAt < KEYFRAME_MIN_INTERVAL_MS) return;
    current.lastKeyframeAt = now;
    if (current.secure.send({ t: 'keyframe' })) current.keyframes++;
  }

  async #poll(generation, current) {
    let report;
    try {
      report = await current.pc.getStats();
    } catch {
      return;
    }
    if (generation !== this.#generation) return;
    const now = performance.now();
    const stats = summarize(report, current.previous);
    current.previous = stats;
    this.#stats = stats;
    if (stats.framesDecoded > current.framesDecoded) {
      current.framesDecoded = stats.framesDecoded;
      current.lastProgressAt = now;
      if (!current.everLive) current.everLive = true;
      if (current.liveSince === null) current.liveSince = now;
      if (now - current.liveSince >= LIVE_RESETS_BACKOFF_MS) this.#failures = 0;
      if (this.#state !== WatchState.LIVE) this.#set(WatchState.LIVE, null);
      else this.#emit();
    } else {
      current.liveSince = null;
      this.#emit();
    }
    // The browser asked for a keyframe (picture loss): the camera only hears it from us.
    const requests = stats.pliCount + stats.firCount;
    if (requests > current.pli) {
      current.pli = requests;
      this.#keyframe(current, 'pli');
    }
    const quiet = now - current.lastProgressAt;
    if (!current.everLive && quiet >= FIRST_FRAME_KEYFRAME_MS) this.#keyframe(current, 'first frame');
    if (current.everLive && quiet >= STALL_KEYFRAME_MS) {
      this.#keyframe(current, 'stalled');
      if (this.#state === WatchState.LIVE) this.#set(WatchState.STALLED, null);
    }
    const state = current.pc.connectionState;
    if (state === 'disconnected') current.disconnectedAt ??= now;
    else current.disconnectedAt = null;
    if (current.disconnectedAt !== null && now - current.disconnectedAt >= DISCONNECTED_RECONNECT_MS) {
      this.#failed({ code: null, iceDisconnected: true });
    } else if (quiet >= STALL_RECONNECT_MS) {
      this.#failed({ code: null, noVideo: true });
    } else if (now - current.secure.lastHeardAt >= SILENCE_RECONNECT_MS) {
      this.#failed({ code: null, silent: true });
    }
  }

  #teardown() {
    const current = this.#current;
    this.#current = null;
    if (current === null) return;
    clearInterval(current.statsTimer);
    current.secure.onend = null;
    current.secure.close();
    current.pc.ontrack = current.pc.onconnectionstatechange = null;
    current.pc.close();
  }

  /** This attempt is over: decide between retrying (with backoff) and stopping for good. */
  #failed(end) {
    this.#generation++;
    const wasLive = this.#current?.everLive ?? false;
    this.#teardown();
    const problem = problemFor(end, { cameraName: this.#device.name });
    if (problem?.final) {
      this.#fail(problem.kind, problem);
      return;
    }
    let shown = problem;
    if (end.noVideo) {
      shown = { kind: Problem.NO_VIDEO, title: 'No video', text: 'The camera sends no picture. Trying again…', final: false, unverified: false };
    }
    // An orderly end (the camera restarting says bye) or a lost connection: quietly try again.
    let delay = BACKOFF_S[Math.min(this.#failures, BACKOFF_S.length - 1)];
    if (wasLive) delay = BACKOFF_S[0];
    if (problem?.kind === Problem.BUSY) delay = Math.max(delay, 5);
    if (problem?.kind === Problem.RATE_LIMITED) delay = Math.max(delay, 10);
    this.#failures++;
    delay *= 0.85 + 0.3 * Math.random();
    this.#retryAt = performance.now() + delay * 1000;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#retryAt = null;
      this.#run(null);
    }, delay * 1000);
    this.#set(WatchState.RECONNECTING, shown);
  }

  #fail(_kind, problem) {
    this.#clearRetry();
    this.#set(WatchState.FAILED, problem);
  }
}
