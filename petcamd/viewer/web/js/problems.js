// What the page tells the owner when pairing or watching ends badly, and whether it tries again.
//
// Error codes come from the device (or, for ERROR frames and relay CLOSE reasons, from anyone on the
// path: those are unverified). The page shows them, but never forgets a pairing because of one.

import { ErrorCode } from './messages.js';
import { CloseReason } from './relay-envelope.js';

/** Kinds of trouble; the page puts the kind in a data attribute so tests and styles can see it. */
export const Problem = Object.freeze({
  BAD_LINK: 'bad-link',
  CODE_EXPIRED: 'code-expired',
  CODE_USED: 'code-used',
  CODE_WRONG: 'code-wrong',
  NOT_PAIRED: 'not-paired',
  REVOKED: 'revoked',
  OFFLINE: 'offline',
  BUSY: 'busy',
  RATE_LIMITED: 'rate-limited',
  NO_VIDEO: 'no-video',
  FAILED: 'failed',
  UNSUPPORTED: 'unsupported',
});

/** Problems the page does not retry by itself: the owner has to act (new code, new pairing). */
const FINAL = new Set([
  Problem.BAD_LINK,
  Problem.CODE_EXPIRED,
  Problem.CODE_USED,
  Problem.CODE_WRONG,
  Problem.NOT_PAIRED,
  Problem.REVOKED,
  Problem.UNSUPPORTED,
]);

const NEW_CODE = 'Open a new pairing code on the camera (petcamctl pair) and scan it again.';

function clock(unixSeconds) {
  const date = new Date(unixSeconds * 1000);
  return `${String(date.getHours()).padStart(2, '0')}:${String(date.getMinutes()).padStart(2, '0')}`;
}

/**
 * The problem for how a channel or a connection ended:
 *   end: {code, verified} from a 'closed' channel output (code null: an orderly end or a lost
 *        connection), or {relayReason} from a relay CLOSE, or {offline: true} when no address of
 *        the camera answered.
 *   context: {pairing, cameraName, expiresAt (Unix seconds), now (Unix seconds)}
 * Returns {kind, title, text, final, unverified} or null for an orderly end that needs no words
 * (the page then reconnects quietly).
 */
export function problemFor(end, { pairing = false, cameraName = 'The camera', expiresAt = null, now = Date.now() / 1000 } = {}) {
  const camera = cameraName || 'The camera';
  const make = (kind, title, text) => ({
    kind,
    title,
    text,
    final: FINAL.has(kind),
    unverified: end.code != null && end.verified === false,
  });
  if (end.offline) {
    return make(Problem.OFFLINE, `${camera} is not reachable`, 'It may be switched off, restarting, or on another network. Trying again…');
  }
  if (end.relayReason != null) {
    switch (end.relayReason) {
      case CloseReason.CLOSED:
        return null;
      case CloseReason.DEVICE_UNAVAILABLE:
        return make(Problem.OFFLINE, `${camera} is offline`, 'The relay cannot reach it: it may be switched off or restarting. Trying again…');
      case CloseReason.TOO_MANY_VIEWERS:
      case CloseReason.TOO_MANY_SESSIONS:
        return make(Problem.BUSY, `${camera} is busy`, 'It has as many viewers as it can serve. Trying again…');
      default:
        return make(Problem.FAILED, 'The connection was interrupted', 'Trying again…');
    }
  }
  switch (end.code) {
    case null:
    case undefined:
      return null;
    case ErrorCode.PAIRING_CLOSED:
      if (expiresAt != null && now > expiresAt) {
        return make(Problem.CODE_EXPIRED, 'This pairing code has expired', `It was valid until ${clock(expiresAt)}. ${NEW_CODE}`);
      }
      return make(
        Problem.CODE_USED,
        'This pairing code is no longer valid',
        `It was already used, it expired, or it was locked after failed attempts. ${NEW_CODE}`,
      );
    case ErrorCode.PAIRING_FAILED:
      return make(Problem.CODE_WRONG, 'This pairing code does not match the camera', `Scan the code on the camera's screen again. ${NEW_CODE}`);
    case ErrorCode.NOT_PAIRED:
      return make(
        Problem.NOT_PAIRED,
        `${camera} does not know this browser`,
        'Its owner may have revoked this browser, or the camera was reset. To watch again, ask the owner for a new pairing code and scan it.',
      );
    case ErrorCode.REVOKED:
      return make(
        Problem.REVOKED,
        'Access revoked',
        `The owner of ${camera} revoked this browser's access. To watch again, ask the owner for a new pairing code and scan it.`,
      );
    case ErrorCode.TOO_MANY_VIEWERS:
      return make(Problem.BUSY, `${camera} is busy`, 'It has as many viewers as it can serve. Trying again…');
    case ErrorCode.RATE_LIMITED:
      return make(Problem.RATE_LIMITED, 'Too many attempts', 'The camera asks to wait a little. Trying again soon…');
    case ErrorCode.DEVICE_UNAVAILABLE:
      return make(Problem.OFFLINE, `${camera} is offline`, 'It may be switched off or restarting. Trying again…');
    case ErrorCode.BAD_MESSAGE:
      if (pairing) return make(Problem.CODE_WRONG, 'Pairing failed', `The camera did not accept this code. ${NEW_CODE}`);
      return make(Problem.FAILED, 'The connection failed', 'The camera could not understand this browser. Trying again…');
    default:
      return make(Problem.FAILED, 'The camera reported a problem', 'Trying again…');
  }
}

/** The note under an unverified message: it came in a plaintext frame anyone on the path could forge. */
export const UNVERIFIED_NOTE = 'This answer could not be verified, so this browser keeps its pairing.';
