// What the player shows about the video, from RTCPeerConnection.getStats(): the media path (from the
// selected candidate pair), resolution, frame rate, bitrate, and the counters that tell the page
// when the decoder is starved (frames stopped, or the browser asked for a keyframe).
//
// Pure functions over the stats objects, so Node tests can feed them recorded reports.

/** How the video reaches the viewer. */
export const MediaPath = Object.freeze({
  LAN: 'lan', // both ends' own addresses: the same network
  P2P: 'p2p', // peer to peer through NAT (server- or peer-reflexive addresses)
  TURN: 'turn', // through a TURN relay (still end-to-end encrypted)
});

/** True for loopback, private, link-local and unique-local addresses (not reachable from the internet). */
export function isLocalAddress(address) {
  if (typeof address !== 'string' || address === '') return false;
  const v4 = address.match(/^(\d+)\.(\d+)\.(\d+)\.(\d+)$/);
  if (v4) {
    const [a, b] = [Number(v4[1]), Number(v4[2])];
    if (a === 10 || a === 127) return true;
    if (a === 172) return b >= 16 && b <= 31;
    if (a === 192) return b === 168;
    if (a === 169) return b === 254;
    if (a === 100) return b >= 64 && b <= 127;
    return false;
  }
  const v6 = address.toLowerCase();
  if (v6 === '::1') return true;
  if (v6.endsWith('.local')) return true; // an mDNS name stands for a host address
  return /^(fe[89ab][0-9a-f]?:|f[cd][0-9a-f]{0,2}:)/.test(v6);
}

/**
 * The path of a candidate pair from its two candidates' types (host, srflx, prflx, relay) and
 * addresses. A relay on either end is TURN; a server-reflexive one is NAT traversal; a
 * peer-reflexive candidate is whatever its address says (on a LAN the far end often learns the
 * other's address from its connectivity checks).
 */
export function pathOf(local, remote) {
  const types = [local?.candidateType, remote?.candidateType];
  if (types.includes('relay')) return MediaPath.TURN;
  if (types.includes('srflx')) return MediaPath.P2P;
  for (const candidate of [local, remote]) {
    if (candidate?.candidateType === 'prflx' && !isLocalAddress(candidate.address ?? candidate.ip)) {
      return MediaPath.P2P;
    }
  }
  return MediaPath.LAN;
}

function byType(report) {
  const all = new Map();
  const entries = typeof report.values === 'function' ? report.values() : Object.values(report);
  for (const stat of entries) {
    if (!all.has(stat.type)) all.set(stat.type, []);
    all.get(stat.type).push(stat);
  }
  return all;
}

function lookup(report, id) {
  if (id == null) return undefined;
  return typeof report.get === 'function' ? report.get(id) : report[id];
}

/** The candidate pair media flows over: the transport's selected one, or the nominated pair. */
export function selectedPair(report) {
  const groups = byType(report);
  for (const transport of groups.get('transport') ?? []) {
    const pair = lookup(report, transport.selectedCandidatePairId);
    if (pair) return pair;
  }
  const pairs = groups.get('candidate-pair') ?? [];
  return pairs.find((p) => p.selected) ?? pairs.find((p) => p.nominated && p.state === 'succeeded');
}

/**
 * One summary of a stats report:
 *   {framesDecoded, framesReceived, width, height, fps, bitrate, bytesReceived, pliCount, firCount,
 *    freezeCount, path, localType, remoteType, timestamp}
 * `previous` (the last summary) turns byte and frame counters into rates; numbers the browser did
 * not report are null.
 */
export function summarize(report, previous = null) {
  const groups = byType(report);
  const video = (groups.get('inbound-rtp') ?? []).find((s) => s.kind === 'video' || s.mediaType === 'video');
  const pair = selectedPair(report);
  const local = pair ? lookup(report, pair.localCandidateId) : undefined;
  const remote = pair ? lookup(report, pair.remoteCandidateId) : undefined;
  const timestamp = video?.timestamp ?? pair?.timestamp ?? null;
  const summary = {
    framesDecoded: video?.framesDecoded ?? 0,
    framesReceived: video?.framesReceived ?? null,
    width: video?.frameWidth ?? null,
    height: video?.frameHeight ?? null,
    fps: video?.framesPerSecond ?? null,
    bitrate: null,
    bytesReceived: video?.bytesReceived ?? 0,
    pliCount: video?.pliCount ?? 0,
    firCount: video?.firCount ?? 0,
    freezeCount: video?.freezeCount ?? 0,
    path: local || remote ? pathOf(local, remote) : null,
    localType: local?.candidateType ?? null,
    remoteType: remote?.candidateType ?? null,
    timestamp,
  };
  if (previous && previous.timestamp != null && timestamp != null && timestamp > previous.timestamp) {
    const seconds = (timestamp - previous.timestamp) / 1000;
    if (summary.bytesReceived >= previous.bytesReceived) {
      summary.bitrate = ((summary.bytesReceived - previous.bytesReceived) * 8) / seconds;
    }
    if (summary.fps == null && summary.framesDecoded >= previous.framesDecoded) {
      summary.fps = (summary.framesDecoded - previous.framesDecoded) / seconds;
    }
  }
  return summary;
}

/** Short owner-facing words for a bitrate in bit/s: "850 kbit/s", "2.4 Mbit/s". */
export function formatBitrate(bitsPerSecond) {
  if (bitsPerSecond == null || !Number.isFinite(bitsPerSecond)) return '';
  if (bitsPerSecond >= 1e6) return `${(bitsPerSecond / 1e6).toFixed(1)} Mbit/s`;
  return `${Math.round(bitsPerSecond / 1e3)} kbit/s`;
}
