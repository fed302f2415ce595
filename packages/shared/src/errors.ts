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
};

/**
 * The network error inside `err` (itself, its cause, or one of an AggregateError's), when it is
 * one of a connection that could not be made or kept: its code in words, and where it went.
 */
export function connectionFailure(err: unknown): { problem: string; address?: string; port?: number; hostname?: string } | undefined {
  const seen = new Set<unknown>();
  const visit = (e: unknown): ReturnType<typeof connectionFailure> => {
    if (!(e instanceof Error) || seen.has(e)) return undefined;
    seen.add(e);
    const n = e as NodeJS.ErrnoException & { address?: string; port?: number; hostname?: string };
    const problem = n.code ? CONNECTION_PROBLEMS[n.code] : undefined;
    if (problem) return { problem, ...(n.address && { address: n.address }), ...(n.port !== undefined && { port: n.port }), ...(n.hostname && { hostname: n.hostname }) };
    for (const inner of [e.cause, ...(e instanceof AggregateError ? e.errors : [])]) {
      const found = visit(inner);
      if (found) return found;
    }
    return undefined;
  };
  return visit(err);
}
