import type { DatasetStatus } from '@transferline/shared';

/** A dataset's counts as one read found them. */
export interface Counted {
  status: DatasetStatus;
  /** when the read began (the counts are at least this recent) */
  readAt: number;
  /** how long the read took */
  tookMs: number;
}

/** A read is reused for this many times its own duration (a few ms for a small dataset: every page reads afresh). */
const REUSE_FACTOR = 3;
/** … and never for longer than this. */
const MAX_REUSE_MS = 60_000;

/**
 * Dataset statuses for the console's pages. A status reads every item of its dataset (seconds
 * for a million), and pages reload: without this, every reload started another full read of
 * every dataset, and a deployment whose items took longer to read than a page waits never
 * showed its front page. Here, concurrent pages share one read per dataset; a read is reused
 * for REUSE_FACTOR times its duration (so reloading keeps Redis reading a large dataset at most
 * a quarter of the time); and a page waits at most `waitMs` for a read: it then shows the last
 * counts with their time, or none yet, while the read goes on for the next page.
 */
export class StatusMemo {
  private readonly entries = new Map<string, { last?: Counted; reading?: Promise<Counted> }>();

  constructor(
    private readonly read: (dataset: string) => Promise<DatasetStatus>,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * The dataset's counts: fresh, or reused (see above), or the last ones when a read does not
   * end within `waitMs` or fails (their age says how old they are); undefined when no read has
   * ended yet. A read that fails with no earlier counts to show rejects.
   */
  async get(dataset: string, waitMs: number): Promise<Counted | undefined> {
    let e = this.entries.get(dataset);
    if (!e) this.entries.set(dataset, (e = {}));
    const last = e.last;
    if (last && this.now() - (last.readAt + last.tookMs) < Math.min(MAX_REUSE_MS, REUSE_FACTOR * last.tookMs)) return last;
    const entry = e;
    entry.reading ??= this.start(dataset, entry);
    try {
      return (await within(entry.reading, waitMs)) ?? entry.last;
    } catch (err) {
      if (entry.last) return entry.last;
      throw err;
    }
  }

  /** Forgets the datasets not among `datasets` (deleted since). */
  keepOnly(datasets: readonly string[]): void {
    const keep = new Set(datasets);
    for (const d of this.entries.keys()) if (!keep.has(d)) this.entries.delete(d);
  }

  private start(dataset: string, entry: { last?: Counted; reading?: Promise<Counted> }): Promise<Counted> {
    const readAt = this.now();
    const reading = this.read(dataset).then(
      (status) => {
        const counted = { status, readAt, tookMs: Math.max(0, this.now() - readAt) };
        // a dataset deleted (and forgotten here) meanwhile keeps no entry
        if (this.entries.get(dataset) === entry) entry.last = counted;
        return counted;
      },
    );
    const settle = () => {
      if (entry.reading === reading) delete entry.reading;
    };
    // settled whoever waits for it: a page that stopped waiting leaves no rejection unhandled
    reading.then(settle, settle);
    return reading;
  }
}

/** `p`'s value if it settles within `ms`, else undefined (a rejection within `ms` rejects). */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
