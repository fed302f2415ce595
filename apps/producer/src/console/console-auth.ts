import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import type { Logger } from '@transferline/shared';
import { sameOriginWrite } from '../loopback-host.js';

/** The console's credentials (TL_CONSOLE_USER / TL_CONSOLE_PASSWORD); no password = no actions for anyone. */
export interface ConsoleCredentials {
  user: string;
  password?: string | undefined;
}

/** `none`: no credentials sent (or none configured); `invalid`: sent but wrong or malformed. */
export type AuthResult = 'valid' | 'invalid' | 'none';

export const REALM = 'transferline console';

// Digests have one length whatever the input, so timingSafeEqual compares them without
// leaking the secret's length or where the first difference is.
function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a, 'utf8').digest(), createHash('sha256').update(b, 'utf8').digest());
}

/** Checks an `Authorization: Basic …` header against the configured pair, in constant time. */
export function checkBasicAuth(header: string | undefined, creds: ConsoleCredentials): AuthResult {
  if (creds.password === undefined || header === undefined) return 'none';
  const m = /^Basic +([A-Za-z0-9+/=]+) *$/i.exec(header);
  if (!m) return 'invalid';
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return 'invalid';
  // both compared, always: no early exit on a wrong user name
  const userOk = sameSecret(decoded.slice(0, colon), creds.user);
  const passwordOk = sameSecret(decoded.slice(colon + 1), creds.password);
  return userOk && passwordOk ? 'valid' : 'invalid';
}

/**
 * Guards the admin routes: without a configured password they do not exist (403); without
 * valid credentials the browser is asked for them (401 + WWW-Authenticate); a change from a
 * foreign origin is refused (403). Failed attempts are logged with the client address only,
 * never with what was sent.
 */
export function requireAdmin(creds: ConsoleCredentials, log?: Logger): RequestHandler {
  return (req, res, next) => {
    if (creds.password === undefined) {
      res.status(403).type('text/plain').send('queue actions are disabled: set TL_CONSOLE_PASSWORD (and TL_CONSOLE_USER) to enable them; the read-only board is at /queues/\n');
      return;
    }
    const auth = checkBasicAuth(req.get('authorization'), creds);
    if (auth !== 'valid') {
      if (auth === 'invalid') log?.warn({ ip: req.socket.remoteAddress, path: req.path }, 'console: wrong credentials');
      res.status(401).set('WWW-Authenticate', `Basic realm="${REALM}", charset="UTF-8"`).type('text/plain').send('sign in to use queue actions; the read-only board is at /queues/\n');
      return;
    }
    if (!sameOriginWrite(req)) {
      log?.warn({ ip: req.socket.remoteAddress, path: req.path }, 'console: refused a change from another origin');
      res.status(403).type('text/plain').send('changes are accepted from the console itself only\n');
      return;
    }
    next();
  };
}
