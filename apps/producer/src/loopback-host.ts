import type { Request } from 'express';
/** A host this machine's loopback answers to: `localhost` (and `*.localhost`, which browsers resolve there), `127.x.x.x`, `::1`. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host.endsWith('.localhost') || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/**
 * Whether a request's Host header names the loopback, for a server bound to it. A web page can
 * have its own DNS name re-pointed at 127.0.0.1 (DNS rebinding) and reach such a server from the
 * browser as a same-origin request, but its requests still carry that name as their Host.
 */
export function hostHeaderIsLoopback(hostHeader: string | undefined): boolean {
  if (!hostHeader) return false;
  return isLoopbackHost(hostHeaderName(hostHeader));
}

/** The host name of a Host header, without its port or an IPv6 address's brackets, in lower case. */
export function hostHeaderName(hostHeader: string): string {
  return (hostHeader.startsWith('[') ? hostHeader.slice(1, hostHeader.indexOf(']')) : hostHeader.replace(/:\d+$/, '')).toLowerCase();
}

/** The host to reach a server bound to `host` from this machine: a wildcard address through loopback, IPv6 in brackets. */
export function reachableHost(host: string): string {
  const h = host === '0.0.0.0' || host === '::' || host === '' ? '127.0.0.1' : host;
  return h.includes(':') ? `[${h}]` : h;
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * Whether a request that changes something comes from no browser page, or from a page of this
 * same server: a browser sends cached basic-auth credentials with any request to this origin,
 * and a loopback server answers pages of any site the browser shows, so a change must come from
 * our own pages (same Origin host, or a Sec-Fetch-Site of same-origin); requests without those
 * headers (curl, scripts, programs) pass. The console's admin routes and serve's POSTs use it.
 */
export function sameOriginWrite(req: Request): boolean {
  if (SAFE_METHODS.has(req.method)) return true;
  // (a browser's own word, which no page can forge: trusted as it is, whatever a proxy did to Host)
  const site = req.get('sec-fetch-site');
  if (site !== undefined) return site === 'same-origin' || site === 'none';
  const origin = req.get('origin');
  if (origin === undefined) return true;
  try {
    return new URL(origin).host === req.get('host');
  } catch {
    return false;
  }
}
