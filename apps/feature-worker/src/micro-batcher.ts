/**
 * Dynamic batching for jobs that arrive one by one: collect up to `maxSize` items or wait at
 * most `maxWaitMs` after the first, then run them together. Each caller gets its own item's
 * result or error, so one bad item fails alone. At most `maxInFlight` batches run at once, in
 * the order they were formed: with 2, the next batch's inputs are read while one computes.
 */
export class MicroBatcher<I, O> {
  private pending: { item: I; resolve: (o: O) => void; reject: (e: Error) => void }[] = [];
  private ready: (typeof this.pending)[] = [];
  private timer: NodeJS.Timeout | undefined;
  private inFlight = 0;
  private idle: (() => void)[] = [];

  constructor(
    private readonly run: (items: I[]) => Promise<(O | Error)[]>,
    private readonly maxSize: number,
    private readonly maxWaitMs: number,
    private readonly maxInFlight = 1,
  ) {}

  submit(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      if (this.pending.length >= this.maxSize) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.maxWaitMs);
    });
  }

  /** Whether items are waiting or a batch is running. */
  get busy(): boolean {
    return this.pending.length > 0 || this.ready.length > 0 || this.inFlight > 0;
  }

  /** Runs what is pending now and waits until no batch is running. */
  async drain(): Promise<void> {
    if (this.pending.length) this.flush();
    if (this.inFlight === 0 && this.ready.length === 0) return;
    await new Promise<void>((resolve) => this.idle.push(resolve));
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.pending.splice(0, this.maxSize);
    if (this.pending.length) this.timer = setTimeout(() => this.flush(), this.maxWaitMs);
    if (batch.length) this.ready.push(batch);
    this.startReady();
  }

  private startReady(): void {
    while (this.inFlight < this.maxInFlight && this.ready.length) {
      const batch = this.ready.shift()!;
      this.inFlight++;
      void this.execute(batch).finally(() => {
        this.inFlight--;
        this.startReady();
        if (this.inFlight === 0 && this.ready.length === 0) for (const done of this.idle.splice(0)) done();
      });
    }
  }

  private async execute(batch: typeof this.pending): Promise<void> {
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
  }
}
