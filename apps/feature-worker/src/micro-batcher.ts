/**
 * Dynamic batching for jobs that arrive one by one: collect up to `maxSize` items or wait at
 * most `maxWaitMs` after the first, then run them together. Each caller gets its own item's
 * result or error, so one bad item fails alone. Batches run one at a time, in order.
 */
export class MicroBatcher<I, O> {
  private pending: { item: I; resolve: (o: O) => void; reject: (e: Error) => void }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private tail: Promise<void> = Promise.resolve();

  constructor(
    private readonly run: (items: I[]) => Promise<(O | Error)[]>,
    private readonly maxSize: number,
    private readonly maxWaitMs: number,
  ) {}

  submit(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      if (this.pending.length >= this.maxSize) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.maxWaitMs);
    });
  }

  /** Waits for every batch started so far. */
  async drain(): Promise<void> {
    if (this.pending.length) this.flush();
    await this.tail;
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.pending.splice(0, this.maxSize);
    if (this.pending.length) this.timer = setTimeout(() => this.flush(), this.maxWaitMs);
    if (batch.length === 0) return;
    this.tail = this.tail.then(async () => {
      try {
        const results = await this.run(batch.map((b) => b.item));
        batch.forEach((b, i) => {
          const r = results[i];
          if (r instanceof Error) b.reject(r);
          else if (r === undefined) b.reject(new Error('batch returned no result for this item'));
          else b.resolve(r);
        });
      } catch (err) {
        for (const b of batch) b.reject(err as Error);
      }
    });
  }
}
