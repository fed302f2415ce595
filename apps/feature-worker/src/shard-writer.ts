/**
 * Gathers the embeddings of several forward batches into one durable write (group commit). A
 * write costs the same two PUTs and two Redis commands whatever its size, and at small batches
 * that was most of what the embed stage spent beside the forward pass. Rows are written when
 * `maxRows` are waiting, as soon as the forward stage has nothing more coming (so a lone job is
 * not held back), and at the latest `maxDelayMs` after the first row waited. Each caller's
 * promise settles with the write that holds its row: a job completes only once its embedding is
 * durable. A hash added again while it waits is written once, for both callers.
 *
 * "Nothing more coming" is judged after each add and after each `poke` (the owner pokes when a
 * forward batch ends without rows: all cached or failed), once the callbacks queued by then have
 * run.
 */
export class ShardWriter {
  private waiting = new Map<string, { row: Float32Array; settle: { resolve: (owner: boolean) => void; reject: (e: Error) => void }[] }>();
  private timer: NodeJS.Timeout | undefined;
  private checkScheduled = false;
  private writing = new Set<Promise<void>>();

  constructor(
    private readonly write: (hashes: string[], data: Float32Array) => Promise<void>,
    private readonly o: {
      dim: number;
      maxRows: number;
      maxDelayMs: number;
      /** Whether more rows are on their way now (the forward stage has batches pending or running). */
      moreComing: () => boolean;
    },
  ) {}

  /**
   * Resolves once `row`, the embedding of `sha256`, is durable: true for the caller whose row was
   * written, false for one that found the same hash waiting and shared its write.
   */
  add(sha256: string, row: Float32Array): Promise<boolean> {
    if (row.length !== this.o.dim) return Promise.reject(new Error(`an embedding of ${row.length} values, expected ${this.o.dim}`));
    return new Promise<boolean>((resolve, reject) => {
      const entry = this.waiting.get(sha256);
      if (entry) entry.settle.push({ resolve, reject });
      else this.waiting.set(sha256, { row, settle: [{ resolve, reject }] });
      if (this.waiting.size >= this.o.maxRows) this.flush();
      else {
        this.timer ??= setTimeout(() => this.flush(), this.o.maxDelayMs);
        this.scheduleCheck();
      }
    });
  }

  /** Asks again whether more rows are coming (a forward batch ended without adding any). */
  poke(): void {
    if (this.waiting.size) this.scheduleCheck();
  }

  /** Writes what waits now and resolves once every write has settled. */
  async drain(): Promise<void> {
    this.flush();
    while (this.writing.size) await Promise.allSettled([...this.writing]);
  }

  /**
   * After the current callbacks have run (the rest of a finished batch adds its rows, the
   * forward stage starts its next batch), writes unless more rows are coming.
   */
  private scheduleCheck(): void {
    if (this.checkScheduled) return;
    this.checkScheduled = true;
    setImmediate(() => {
      this.checkScheduled = false;
      if (this.waiting.size && !this.o.moreComing()) this.flush();
    });
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    while (this.waiting.size) {
      const group = [...this.waiting].slice(0, this.o.maxRows);
      for (const [sha256] of group) this.waiting.delete(sha256);
      const data = new Float32Array(group.length * this.o.dim);
      group.forEach(([, e], i) => data.set(e.row, i * this.o.dim));
      const hashes = group.map(([sha256]) => sha256);
      const done = Promise.resolve()
        .then(() => this.write(hashes, data))
        .then(
          () => group.forEach(([, e]) => e.settle.forEach((s, i) => s.resolve(i === 0))),
          (err: unknown) => group.forEach(([, e]) => e.settle.forEach((s) => s.reject(err as Error))),
        );
      this.writing.add(done);
      void done.finally(() => this.writing.delete(done));
    }
  }
}
