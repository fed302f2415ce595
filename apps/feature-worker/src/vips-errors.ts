/**
 * libvips keeps one error buffer per process, shared by every image decoding at once: sharp reads
 * it when an image fails and clears it after every image, failed or not (lovell/sharp#902,
 * libvips/libvips#707). So an image that fails while others decode can get another image's
 * lines, both, or none at all ("Unknown error", a neighbour's finish having cleared them).
 * Measured here: in a mix of bad images decoded 16 at a time, a quarter of the failures came back
 * with another image's message, some with its reason code (a corrupt PNG recorded as
 * `truncated`); one bad image among 15 good ones lost its message about one time in eight.
 *
 * So a decode that failed while any other was in flight is run again, alone: new decodes wait
 * while the ones in flight finish, then it runs by itself, and what it says then is its own.
 * Both waits are bounded (DRAIN_LIMIT_MS, RERUN_LIMIT_MS): bad images fail fast (at a header, or
 * where their bytes break off), and one whose second run cannot be had in time keeps its first
 * error. A decode that failed alone, or that the caller knows failed on its own account, is not
 * run again. Successful decodes, nearly all of them, pay only the bookkeeping.
 */

/** Longest that new decodes are held back while the ones in flight finish, before a re-run. */
export const DRAIN_LIMIT_MS = 2_000;
/** Longest a re-run may take (everything else waits meanwhile). */
export const RERUN_LIMIT_MS = 5_000;

interface Decode {
  settled: Promise<void>;
  settle: () => void;
  /** another decode was in flight at some moment while this one was */
  overlapped: boolean;
}

const within = <T>(p: Promise<T>, ms: number): Promise<{ done: true; value: T } | { done: false }> => {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.then((value) => ({ done: true as const, value })),
    new Promise<{ done: false }>((resolve) => (timer = setTimeout(() => resolve({ done: false }), ms))),
  ]).finally(() => clearTimeout(timer));
};

export class VipsErrorAttribution {
  private readonly live = new Set<Decode>();
  /** A failed decode being run again by itself: no other decode starts meanwhile. */
  private alone: Promise<unknown> | undefined;
  /** Failed decodes run again alone, and those that could not be in time (kept their first error). */
  readonly counts = { rerunAlone: 0, keptFirstError: 0 };
  /** Told of each, as it happens (the preprocess worker counts them in `tl_decode_reruns_total`). */
  onOutcome: ((outcome: 'rerun-alone' | 'kept-first-error') => void) | undefined;

  constructor(private readonly limits = { drainMs: DRAIN_LIMIT_MS, rerunMs: RERUN_LIMIT_MS }) {}

  /**
   * Runs `decode`, and on failure makes sure its error is its own. `ownFailure` says of an error
   * that it cannot be another image's (a decode that ran out its own time), so it stands as is.
   */
  async run<T>(decode: () => Promise<T>, ownFailure: (err: unknown) => boolean = () => false): Promise<T> {
    while (this.alone) await this.alone.catch(() => undefined);
    const me = this.enter();
    try {
      return await decode();
    } catch (err) {
      this.end(me);
      if (!me.overlapped || ownFailure(err)) throw err;
      return await this.runAlone(decode, err);
    } finally {
      this.end(me);
    }
  }

  private enter(): Decode {
    let settle!: () => void;
    const settled = new Promise<void>((resolve) => (settle = resolve));
    const d: Decode = { settled, settle, overlapped: this.live.size > 0 };
    for (const other of this.live) other.overlapped = true;
    this.live.add(d);
    return d;
  }

  private end(d: Decode): void {
    if (this.live.delete(d)) d.settle();
  }

  private async runAlone<T>(decode: () => Promise<T>, firstError: unknown): Promise<T> {
    while (this.alone) await this.alone.catch(() => undefined);
    const run = (async (): Promise<T> => {
      const drained = await within(
        (async () => {
          while (this.live.size > 0) await Promise.all([...this.live].map((d) => d.settled));
        })(),
        this.limits.drainMs,
      );
      if (drained.done) {
        this.counts.rerunAlone++;
        this.onOutcome?.('rerun-alone');
        // in flight like any decode: one that outlives RERUN_LIMIT_MS still overlaps the next ones
        const rerun = this.enter();
        const again = await within(
          decode().finally(() => this.end(rerun)).then(
            (value) => ({ ok: true as const, value }),
            (error: unknown) => ({ ok: false as const, error }),
          ),
          this.limits.rerunMs,
        );
        if (again.done) {
          if (again.value.ok) return again.value.value;
          throw again.value.error;
        }
      }
      this.counts.keptFirstError++;
      this.onOutcome?.('kept-first-error');
      throw firstError;
    })();
    this.alone = run;
    try {
      return await run;
    } finally {
      if (this.alone === run) this.alone = undefined;
    }
  }
}
