/**
 * A failure that retrying cannot fix (bad payload, undecodable image, missing object). The
 * wiring turns it into BullMQ's UnrecoverableError so it fails at once, with `reason` as a
 * bounded code for metrics and `status`, and the message for people.
 */
export class PermanentError extends Error {
  override readonly name = 'PermanentError';
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

const CONNECTION_PROBLEMS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ENOTFOUND: 'no such host',
  EAI_AGAIN: 'the host name could not be resolved',
  ETIMEDOUT: 'the connection timed out',
  EHOSTUNREACH: 'the host is unreachable',
  ECONNRESET: 'the connection was reset',
  EPIPE: 'the connection was closed',
};

/** Whether a socket error code means a connection could not be made or kept (one home for the codes). */
export function isConnectionCode(code: string | undefined): boolean {
  return code !== undefined && Object.hasOwn(CONNECTION_PROBLEMS, code);
}

/** The codes, for matching messages that carry one but lost the error's `code` ("connect ECONNREFUSED …"). */
export const CONNECTION_CODE_PATTERN = Object.keys(CONNECTION_PROBLEMS).join('|');

type Failure = { problem: string; address?: string; port?: number; hostname?: string };

/**
 * The network error inside `err` (itself, its cause, or one of an AggregateError's: a host with an
 * IPv6 and an IPv4 address refused on both), when it is one of a connection that could not be made
 * or kept: its code in words, and where it went (from the error that says).
 */
export function connectionFailure(err: unknown): Failure | undefined {
  const chain: (Error & { code?: string; address?: string; port?: number; hostname?: string })[] = [];
  const walk = (e: unknown): void => {
    if (!(e instanceof Error) || chain.includes(e)) return;
    chain.push(e);
    walk(e.cause);
    if (e instanceof AggregateError) for (const inner of e.errors) walk(inner);
  };
  walk(err);
  const coded = chain.find((e) => isConnectionCode(e.code));
  if (!coded) return undefined;
  const where = [coded, ...chain].find((e) => e.address !== undefined || e.hostname !== undefined) ?? coded;
  return { problem: CONNECTION_PROBLEMS[coded.code!]!, ...(where.address && { address: where.address }), ...(where.port !== undefined && { port: where.port }), ...(where.hostname && { hostname: where.hostname }) };
}
