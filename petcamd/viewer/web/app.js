// The viewer page: pairing from the QR code's link, the list of paired cameras, live video.
//
// Served as a static file by the camera (Local Network Mode) and by a relay (internet mode), under a
// Content-Security-Policy that allows no inline script or style: everything the page does is here
// and in js/. The page's state is mirrored in data attributes on <main> (data-view, data-state,
// data-problem) for styles and tests.

import { message, ProtocolError } from './js/messages.js';
import { PairingUrlError, decodePairingUrl } from './js/pairing-url.js';
import { pageServedBy } from './js/links.js';
import { Problem, UNVERIFIED_NOTE } from './js/problems.js';
import { CameraWatch, WatchState, pairWithCamera } from './js/session.js';
import { MediaPath, formatBitrate } from './js/stats.js';
import { ViewerStore } from './js/store.js';

const $ = (id) => document.getElementById(id);
const main = $('app');
const video = $('video');

let store = null;
let watch = null;
let lastSnapshot = null;
let retryDeadline = null;

const PATH_LABELS = {
  [MediaPath.LAN]: 'LAN direct',
  [MediaPath.P2P]: 'Internet, peer to peer',
  [MediaPath.TURN]: 'TURN relay',
};

const STATE_LABELS = {
  [WatchState.CONNECTING]: 'Connecting…',
  [WatchState.LIVE]: 'Live',
  [WatchState.STALLED]: 'Waiting for the picture…',
  [WatchState.RECONNECTING]: 'Reconnecting…',
  [WatchState.FAILED]: 'Stopped',
  [WatchState.STOPPED]: 'Stopped',
};

// --- views ---------------------------------------------------------------------------------------

function show(view, { title = 'petcam', back = false } = {}) {
  for (const section of document.querySelectorAll('main > .view')) section.hidden = section.id !== `view-${view}`;
  main.dataset.view = view;
  $('title').textContent = title;
  $('back').hidden = !back;
  document.title = title === 'petcam' ? 'petcam' : `${title} – petcam`;
}

function showProblem(problem, { device = null, retry = null, watchDevice = null } = {}) {
  main.dataset.problem = problem.kind;
  $('problem-title').textContent = problem.title;
  $('problem-text').textContent = problem.text;
  const note = $('problem-note');
  note.hidden = !problem.unverified;
  note.textContent = problem.unverified ? UNVERIFIED_NOTE : '';
  const buttons = {
    'problem-retry': retry,
    'problem-watch': watchDevice && (() => startWatching(watchDevice)),
    'problem-cameras': () => showCameras(),
    'problem-forget': device && (() => forget(device)),
  };
  for (const [id, action] of Object.entries(buttons)) {
    const button = $(id);
    button.hidden = !action;
    button.onclick = action;
  }
  if (watchDevice) $('problem-watch').textContent = `Watch ${watchDevice.name}`;
  show('problem', { title: device?.name ?? 'petcam', back: true });
  $('problem-title').focus?.();
}

// --- pairing -------------------------------------------------------------------------------------

/** The pairing link's payload, null when the page was opened without one, or {error}. */
function pairingFromLocation() {
  if (!location.hash || location.hash === '#') return null;
  try {
    return decodePairingUrl(location.href);
  } catch (error) {
    if (error instanceof PairingUrlError) return { error };
    throw error;
  }
}

/** The secret must not stay in the address bar: a reload would try to pair again with a used code. */
function forgetPairingLink() {
  history.replaceState(null, '', location.pathname + location.search);
}

function defaultViewerName() {
  const ua = navigator.userAgent;
  const device = /iPhone/.test(ua)
    ? 'iPhone'
    : /iPad/.test(ua)
      ? 'iPad'
      : /Android/.test(ua)
        ? 'Android phone'
        : /Macintosh/.test(ua)
          ? 'Mac'
          : /Windows/.test(ua)
            ? 'Windows'
            : /CrOS/.test(ua)
              ? 'Chromebook'
              : /Linux/.test(ua)
                ? 'Linux'
                : '';
  const browser = /Edg\//.test(ua) ? 'Edge' : /Firefox\//.test(ua) ? 'Firefox' : /Chrome\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Browser';
  return device ? `${browser} on ${device}` : browser;
}

function clockTime(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function showPairing(payload) {
  const cameraName = payload.name || 'the camera';
  $('pair-camera').textContent = cameraName;
  const remaining = payload.expiresAt - Date.now() / 1000;
  $('pair-expiry').textContent =
    remaining > 0 ? `This pairing code is valid until ${clockTime(payload.expiresAt)}.` : 'This pairing code may have expired; try it anyway.';
  const input = $('viewer-name');
  if (!input.value) input.value = defaultViewerName();
  $('name-error').hidden = true;
  $('pair-status').textContent = '';
  $('pair-button').disabled = false;
  $('pair-form').onsubmit = (event) => {
    event.preventDefault();
    pair(payload);
  };
  delete main.dataset.problem;
  show('pair', { title: 'Pair a camera' });
}

/** The page's location for endpointsFor(), and whether the camera itself served this page. */
async function pageFor(deviceId, device = null) {
  let isDevice = device?.servedBy === location.origin;
  if (!isDevice) {
    isDevice = await pageServedBy(deviceId);
    if (isDevice && device) await store.updateDevice(deviceId, { servedBy: location.origin });
  }
  return { origin: location.origin, protocol: location.protocol, host: location.host, isDevice };
}

async function pair(payload) {
  const input = $('viewer-name');
  const name = input.value.trim();
  try {
    message({ t: 'pair', name });
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    const nameError = $('name-error');
    nameError.textContent = name ? 'Use at most 64 letters, digits, spaces or punctuation.' : 'Enter a name.';
    nameError.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  input.removeAttribute('aria-invalid');
  $('name-error').hidden = true;
  $('pair-button').disabled = true;
  $('pair-status').textContent = `Pairing with ${payload.name || 'the camera'}…`;
  main.dataset.pairing = 'running';
  let result;
  try {
    const identity = await store.identity();
    result = await pairWithCamera({ payload, viewerName: name, identity, page: await pageFor(payload.deviceId) });
  } catch (problem) {
    main.dataset.pairing = 'failed';
    await pairingFailed(payload, problem);
    return;
  }
  await store.putDevice(result.device);
  main.dataset.pairing = 'done';
  forgetPairingLink();
  startWatching(result.device, result.secure);
}

async function pairingFailed(payload, problem) {
  if (problem instanceof ProtocolError) {
    problem = { kind: Problem.BAD_LINK, title: 'This pairing link is damaged', text: problem.message, final: true };
  } else if (problem instanceof Error) {
    problem = { kind: Problem.FAILED, title: 'Pairing failed', text: `${problem.name}: ${problem.message}`, final: false };
  }
  if (problem.final) forgetPairingLink();
  const known = await store.device(payload.deviceId);
  if (known && (problem.kind === Problem.CODE_USED || problem.kind === Problem.CODE_EXPIRED)) {
    showProblem(
      { ...problem, text: `${problem.text} This browser is paired with ${known.name} already.` },
      { watchDevice: known },
    );
    return;
  }
  showProblem(problem, { retry: problem.final ? null : () => showPairing(payload) });
}

// --- cameras -------------------------------------------------------------------------------------

async function showCameras() {
  stopWatching();
  delete main.dataset.problem;
  const devices = await store.devices();
  const list = $('camera-list');
  list.replaceChildren();
  for (const device of devices) {
    const item = document.createElement('li');
    const name = document.createElement('span');
    name.className = 'camera-name';
    name.textContent = device.name;
    const since = document.createElement('span');
    since.className = 'hint';
    since.textContent = `Paired ${new Date(device.pairedAt).toLocaleDateString()}`;
    const watchButton = document.createElement('button');
    watchButton.type = 'button';
    watchButton.className = 'primary';
    watchButton.textContent = 'Watch';
    watchButton.setAttribute('aria-label', `Watch ${device.name}`);
    watchButton.onclick = () => startWatching(device);
    const forgetButton = document.createElement('button');
    forgetButton.type = 'button';
    forgetButton.className = 'danger';
    forgetButton.textContent = 'Forget';
    forgetButton.setAttribute('aria-label', `Forget ${device.name}`);
    forgetButton.onclick = () => forget(device);
    const text = document.createElement('div');
    text.append(name, since);
    item.append(text, watchButton, forgetButton);
    list.append(item);
  }
  $('no-cameras').hidden = devices.length > 0;
  show('cameras');
}

async function forget(device) {
  const sure = window.confirm(
    `Forget ${device.name}? This browser can then only watch it after pairing again with a new code. ` +
      `(The camera's owner can also remove this browser with petcamctl revoke.)`,
  );
  if (!sure) return;
  await store.removeDevice(device.deviceId);
  await showCameras();
}

// --- watching ------------------------------------------------------------------------------------

function stopWatching() {
  watch?.stop();
  watch = null;
  lastSnapshot = null;
  retryDeadline = null;
  video.srcObject = null;
  delete main.dataset.state;
}

async function startWatching(device, adopt = null) {
  stopWatching();
  delete main.dataset.problem;
  show('player', { title: device.name, back: true });
  renderWatch({ state: WatchState.CONNECTING, problem: null, stats: null, endpoint: null, retryInS: null }, device);
  const identity = await store.identity();
  const page = await pageFor(device.deviceId, device);
  const current = new CameraWatch({
    device,
    identity,
    video,
    page,
    store,
    onchange: (snapshot) => {
      if (watch === current) renderWatch(snapshot, device);
    },
  });
  watch = current;
  await store.updateDevice(device.deviceId, { lastUsedAt: Date.now() });
  current.start(adopt);
}

function renderWatch(snapshot, device) {
  lastSnapshot = snapshot;
  retryDeadline = snapshot.retryInS === null ? null : performance.now() + snapshot.retryInS * 1000;
  main.dataset.state = snapshot.state;
  if (snapshot.state === WatchState.FAILED) {
    // A forged ERROR frame could claim anything: then trying again makes sense; after an
    // authenticated revocation it does not.
    const retry = snapshot.problem.unverified ? () => startWatching(device) : null;
    showProblem(snapshot.problem, { device, retry });
    return;
  }
  if (snapshot.problem) main.dataset.problem = snapshot.problem.kind;
  else delete main.dataset.problem;
  const overlay = $('overlay');
  overlay.hidden = snapshot.state === WatchState.LIVE;
  const problem = snapshot.problem;
  $('overlay-title').textContent = problem?.title ?? STATE_LABELS[snapshot.state];
  renderRetry();
  $('state-text').textContent = STATE_LABELS[snapshot.state];
  $('state-dot').dataset.state = snapshot.state;
  const stats = snapshot.stats;
  $('stat-path').textContent = stats?.path ? PATH_LABELS[stats.path] : '–';
  $('stat-resolution').textContent = stats?.width ? `${stats.width} × ${stats.height}` : '–';
  if (stats?.width && stats?.height) $('stage').style.setProperty('--ratio', (stats.width / stats.height).toFixed(4));
  $('stat-fps').textContent = stats?.fps != null ? `${Math.round(stats.fps)} fps` : '–';
  $('stat-bitrate').textContent = formatBitrate(stats?.bitrate) || '–';
  const endpoint = snapshot.endpoint;
  $('stat-signaling').textContent = endpoint ? (endpoint.kind === 'relay' ? 'via relay' : 'direct') : '–';
}

function renderRetry() {
  const snapshot = lastSnapshot;
  if (snapshot === null) return;
  const problem = snapshot.problem;
  let text = problem?.text ?? '';
  if (problem?.unverified) text = `${text} ${UNVERIFIED_NOTE}`;
  const retry = $('retry-now');
  if (retryDeadline !== null) {
    const seconds = Math.max(0, Math.ceil((retryDeadline - performance.now()) / 1000));
    text = problem ? text.replace(/Trying again…$/, '') : '';
    text = `${text} ${seconds > 0 ? `Next try in ${seconds} s.` : 'Trying now…'}`.trim();
    retry.hidden = seconds <= 0;
  } else {
    retry.hidden = true;
  }
  $('overlay-text').textContent = text;
}

// --- start ---------------------------------------------------------------------------------------

function wireControls() {
  $('back').onclick = () => showCameras();
  $('retry-now').onclick = () => watch?.retryNow();
  $('fullscreen').onclick = () => {
    const stage = $('stage');
    if (document.fullscreenElement) document.exitFullscreen();
    else if (stage.requestFullscreen) stage.requestFullscreen().catch(() => {});
    else video.webkitEnterFullscreen?.(); // iPhone Safari: the video element only
  };
  setInterval(renderRetry, 1000);
  // Leaving the page: say bye, so the camera ends the session at once; coming back to it from the
  // browser's back-forward cache: watch again.
  addEventListener('pagehide', () => watch?.stop());
  addEventListener('pageshow', (event) => {
    if (event.persisted && watch?.device && watch.state === WatchState.STOPPED) startWatching(watch.device);
  });
}

async function start() {
  wireControls();
  if (typeof RTCPeerConnection === 'undefined') {
    showProblem({
      kind: Problem.UNSUPPORTED,
      title: 'This browser cannot show live video',
      text: 'It has no WebRTC. Open this page in a current Chrome, Firefox, Safari or Edge.',
    });
    return;
  }
  try {
    store = await ViewerStore.open();
  } catch (error) {
    showProblem({
      kind: Problem.UNSUPPORTED,
      title: 'This browser cannot remember the camera',
      text: `Its storage is not available (${error.name}); private browsing may block it.`,
    });
    return;
  }
  const pairing = pairingFromLocation();
  if (pairing?.error) {
    forgetPairingLink();
    showProblem({
      kind: Problem.BAD_LINK,
      title: 'This is not a working pairing link',
      text: `Scan the QR code on the camera’s screen again (${pairing.error.message}).`,
    });
    return;
  }
  if (pairing) {
    showPairing(pairing);
    return;
  }
  const devices = await store.devices();
  if (devices.length > 0) await startWatching(devices[0]);
  else await showCameras();
}

start().catch((error) => {
  showProblem({ kind: Problem.FAILED, title: 'The viewer failed to start', text: `${error.name}: ${error.message}` });
});
