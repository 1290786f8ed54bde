// The page's pure parts: where it connects (endpointsFor), what it says when things end
// (problemFor), what it reads from getStats() (summarize), and SecureLink joining a ViewerChannel
// to a link, against the test device. The page as a whole runs in Chromium in
// tests/test_web_viewer_e2e.py.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ViewerChannel } from '../../petcamd/viewer/web/js/channel.js';
import { generateIdentity, keyId } from '../../petcamd/viewer/web/js/identity.js';
import { endpointsFor } from '../../petcamd/viewer/web/js/links.js';
import { ErrorCode, errorFrame } from '../../petcamd/viewer/web/js/messages.js';
import { Problem, problemFor } from '../../petcamd/viewer/web/js/problems.js';
import { CloseReason } from '../../petcamd/viewer/web/js/relay-envelope.js';
import { SecureLink } from '../../petcamd/viewer/web/js/session.js';
import { MediaPath, formatBitrate, isLocalAddress, pathOf, summarize } from '../../petcamd/viewer/web/js/stats.js';
import { TestDevice } from './test-device.mjs';

const DEVICE = { addresses: ['192.168.1.20', 'fd00::20'], port: 8080, relayUrl: 'wss://relay.example.org/' };
const urls = (endpoints) => endpoints.map((e) => `${e.kind} ${e.url}`);

test('a page served by the camera talks to the server it came from, or to the relay', () => {
  // Its other addresses are not tried: the camera's CSP allows only the page's own host (and relay).
  const page = { origin: 'http://cam.local:8080', protocol: 'http:', host: 'cam.local:8080', isDevice: true };
  assert.deepEqual(urls(endpointsFor(DEVICE, page)), ['lan ws://cam.local:8080/ws', 'relay wss://relay.example.org/viewer']);
});

test("a page on the relay's https origin uses the relay and never ws://", () => {
  const page = { origin: 'https://relay.example.org', protocol: 'https:', host: 'relay.example.org', isDevice: false };
  assert.deepEqual(urls(endpointsFor(DEVICE, page)), ['relay wss://relay.example.org/viewer']);
  const local = { ...DEVICE, relayUrl: '' };
  assert.deepEqual(urls(endpointsFor(local, page)), []);
});

test('another http page tries the LAN addresses; the endpoint that worked last goes first', () => {
  const page = { origin: 'http://127.0.0.1:9000', protocol: 'http:', host: '127.0.0.1:9000', isDevice: false };
  const device = { ...DEVICE, relayUrl: '', lastEndpoint: 'ws://[fd00::20]:8080/ws' };
  assert.deepEqual(urls(endpointsFor(device, page)), ['lan ws://[fd00::20]:8080/ws', 'lan ws://192.168.1.20:8080/ws']);
  const broken = { ...DEVICE, relayUrl: 'not a url' };
  assert.equal(endpointsFor(broken, page).length, 2);
});

test('problems: pairing codes, revocation, unverified errors, relay reasons, retries', () => {
  const now = 1_700_000_400;
  const expired = problemFor({ code: ErrorCode.PAIRING_CLOSED, verified: false }, { pairing: true, expiresAt: now - 100, now });
  assert.equal(expired.kind, Problem.CODE_EXPIRED);
  assert.match(expired.text, /valid until \d\d:\d\d/);
  assert.equal(expired.final, true);
  const used = problemFor({ code: ErrorCode.PAIRING_CLOSED, verified: false }, { pairing: true, expiresAt: now + 100, now });
  assert.equal(used.kind, Problem.CODE_USED);
  assert.match(used.text, /petcamctl pair/);
  const revoked = problemFor({ code: ErrorCode.REVOKED, verified: true }, { cameraName: 'Kitchen cam' });
  assert.deepEqual([revoked.kind, revoked.final, revoked.unverified], [Problem.REVOKED, true, false]);
  assert.match(revoked.text, /owner of Kitchen cam revoked/);
  const notPaired = problemFor({ code: ErrorCode.NOT_PAIRED, verified: false }, { cameraName: 'Kitchen cam' });
  assert.deepEqual([notPaired.kind, notPaired.final, notPaired.unverified], [Problem.NOT_PAIRED, true, true]);
  assert.equal(problemFor({ code: ErrorCode.PAIRING_FAILED, verified: false }, { pairing: true }).kind, Problem.CODE_WRONG);
  assert.equal(problemFor({ code: ErrorCode.BAD_MESSAGE, verified: false }, { pairing: true }).kind, Problem.CODE_WRONG);
  assert.equal(problemFor({ code: ErrorCode.BAD_MESSAGE, verified: true }).final, false);
  assert.equal(problemFor({ code: ErrorCode.TOO_MANY_VIEWERS, verified: true }).kind, Problem.BUSY);
  assert.equal(problemFor({ code: ErrorCode.RATE_LIMITED, verified: false }).kind, Problem.RATE_LIMITED);
  assert.equal(problemFor({ code: 4242, verified: true }).final, false);
  assert.equal(problemFor({ offline: true }, { cameraName: 'Kitchen cam' }).title, 'Kitchen cam is not reachable');
  assert.equal(problemFor({ relayReason: CloseReason.DEVICE_UNAVAILABLE }).kind, Problem.OFFLINE);
  assert.equal(problemFor({ relayReason: CloseReason.TOO_MANY_SESSIONS }).kind, Problem.BUSY);
  assert.equal(problemFor({ relayReason: CloseReason.CLOSED }), null);
  assert.equal(problemFor({ code: null, verified: true, byPeer: true }), null); // bye: reconnect quietly
});

test('media path from the selected candidate pair', () => {
  const host = { candidateType: 'host', address: '192.168.1.5' };
  assert.equal(pathOf(host, { candidateType: 'host', address: '192.168.1.20' }), MediaPath.LAN);
  assert.equal(pathOf(host, { candidateType: 'prflx', address: '192.168.1.20' }), MediaPath.LAN);
  assert.equal(pathOf(host, { candidateType: 'prflx', address: '203.0.113.9' }), MediaPath.P2P);
  assert.equal(pathOf({ candidateType: 'srflx', address: '198.51.100.2' }, host), MediaPath.P2P);
  assert.equal(pathOf(host, { candidateType: 'relay', address: '198.51.100.3' }), MediaPath.TURN);
  for (const address of ['127.0.0.1', '10.1.2.3', '172.20.0.1', '192.168.0.1', '169.254.1.1', '100.64.0.1', '::1', 'fe80::1', 'fd12::1', 'abc.local']) {
    assert.equal(isLocalAddress(address), true, address);
  }
  for (const address of ['8.8.4.4', '172.32.0.1', '192.0.2.1', '2001:db8::1', '', undefined]) {
    assert.equal(isLocalAddress(address), false, String(address));
  }
});

test('stats: resolution, rates from two reports, keyframe counters, selected pair', () => {
  const report = (t, frames, bytes, pli) =>
    new Map(
      [
        { id: 'T', type: 'transport', selectedCandidatePairId: 'P', timestamp: t },
        { id: 'P', type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R', timestamp: t },
        { id: 'L', type: 'local-candidate', candidateType: 'host', address: '127.0.0.1' },
        { id: 'R', type: 'remote-candidate', candidateType: 'host', address: '127.0.0.1' },
        { id: 'V', type: 'inbound-rtp', kind: 'video', timestamp: t, framesDecoded: frames, frameWidth: 320, frameHeight: 240, bytesReceived: bytes, pliCount: pli, firCount: 0 },
      ].map((s) => [s.id, s]),
    );
  const first = summarize(report(1000, 10, 10_000, 0));
  assert.deepEqual([first.width, first.height, first.path, first.bitrate, first.fps], [320, 240, MediaPath.LAN, null, null]);
  const second = summarize(report(3000, 70, 260_000, 2), first);
  assert.equal(second.bitrate, 1_000_000);
  assert.equal(second.fps, 30);
  assert.equal(second.pliCount, 2);
  assert.equal(formatBitrate(second.bitrate), '1.0 Mbit/s');
  assert.equal(formatBitrate(850_400), '850 kbit/s');
  assert.equal(formatBitrate(null), '');
  // No transport stats (older browsers): the selected or nominated pair.
  const bare = new Map([
    ['P', { id: 'P', type: 'candidate-pair', nominated: true, state: 'succeeded', localCandidateId: 'L', remoteCandidateId: 'R' }],
    ['L', { id: 'L', type: 'local-candidate', candidateType: 'relay' }],
    ['R', { id: 'R', type: 'remote-candidate', candidateType: 'host' }],
  ]);
  assert.equal(summarize(bare).path, MediaPath.TURN);
  assert.equal(summarize(new Map()).path, null);
});

/** A FrameLink whose far end is the test device, delivering asynchronously like a WebSocket. */
class FakeLink {
  constructor(device) {
    this.device = device;
    this.endpoint = { kind: 'lan', url: 'ws://test/ws' };
    this.closed = false;
    this.toDevice = [];
  }

  send(frame) {
    if (!this.closed) this.toDevice.push(frame);
  }

  deliver(frame) {
    queueMicrotask(() => this.onframe?.(frame));
  }

  close() {
    this.closed = true;
  }

  drop() {
    this.onclose?.({ wsCode: 1006 });
  }
}

test('SecureLink: handshake, messages both ways, pings answered, bye from the camera', async () => {
  const device = new TestDevice();
  const viewer = generateIdentity();
  const link = new FakeLink(device);
  const secure = new SecureLink(link, ViewerChannel.forSession(viewer.privateKey, device.identity.publicKey));
  const opened = secure.open(1000);
  link.deliver(device.reply(link.toDevice.shift()));
  const ready = await opened;
  assert.equal(ready.kind, 'ready');
  assert.equal(keyId(device.viewerKey), viewer.keyId);

  const received = [];
  secure.onmessage = (message) => received.push(message);
  assert.equal(secure.send({ t: 'keyframe' }), true);
  assert.deepEqual(device.read(link.toDevice.shift()), { t: 'keyframe' });
  link.deliver(device.send({ t: 'ping', seq: 5 }));
  link.deliver(device.send({ t: 'answer', sdp: 'v=0\r\n' }));
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(device.read(link.toDevice.shift()), { t: 'pong', seq: 5 });
  assert.deepEqual(received, [{ t: 'answer', sdp: 'v=0\r\n' }]);

  const ends = [];
  secure.onend = (end) => ends.push(end);
  link.deliver(device.send({ t: 'bye' }));
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(ends.map((e) => [e.code, e.verified]), [[null, true]]);
  assert.equal(link.closed, true);
  assert.equal(secure.send({ t: 'keyframe' }), false);
});

test('SecureLink: an ERROR frame or a dropped link rejects the handshake with the end', async () => {
  const device = new TestDevice();
  const viewer = generateIdentity();
  let link = new FakeLink(device);
  let secure = new SecureLink(link, ViewerChannel.forSession(viewer.privateKey, device.identity.publicKey));
  let opened = secure.open(1000);
  link.deliver(errorFrame(ErrorCode.NOT_PAIRED));
  await assert.rejects(opened, (end) => end.code === ErrorCode.NOT_PAIRED && end.verified === false);

  link = new FakeLink(device);
  secure = new SecureLink(link, ViewerChannel.forSession(viewer.privateKey, device.identity.publicKey));
  opened = secure.open(1000);
  link.drop();
  await assert.rejects(opened, (end) => end.code === null && end.wsCode === 1006);

  link = new FakeLink(device);
  secure = new SecureLink(link, ViewerChannel.forSession(viewer.privateKey, device.identity.publicKey));
  await assert.rejects(secure.open(20), (end) => end.timeout === true);
  assert.equal(link.closed, true);
});
