/** Bytes one request (or one part of it) holds of a ByteBudget. */
export interface ByteHold {
  /** Adds n bytes if the budget has room and nobody waits for it: false (and nothing taken) otherwise; 0 bytes always. */
  take: (n: number) => boolean;
  /** Adds n bytes whatever the room (bytes that arrived beyond what was reserved for them). */
  add: (n: number) => void;
  /** Gives everything back; later calls do nothing. */
  release: () => void;
}

/** Why a wait for room ended without it. */
export class BudgetWaitError extends Error {
  override readonly name = 'BudgetWaitError';
}

/**
 * The image bytes `serve` holds at once (bodies arriving, images waiting for their forward pass),
 * across requests: the admission count alone bounds images, and each may be 64 MB. Bodies that
 * clients send take their room at once (a raw body with a declared length) or as they arrive
 * (multipart parts, chunked bodies), and are refused past the budget (503: retry); reads the
 * server makes itself (s3:// keys) wait their turn for room, first come first served, and while
 * one waits no body takes the room it waits for.
 */
export class ByteBudget {
  private held = 0;
  private readonly waiters: { n: number; grant: (h: ByteHold) => void }[] = [];

  constructor(
    readonly limit: number,
    private readonly onChange: (held: number) => void = () => {},
  ) {}

  get bytes(): number {
    return this.held;
  }

  /** An empty hold, to take from as bytes arrive. */
  hold(): ByteHold {
    let mine = 0;
    let released = false;
    return {
      take: (n) => {
        if (n <= 0) return !released;
        if (released || this.waiters.length > 0 || this.held + n > this.limit) return false;
        mine += n;
        this.change(n);
        return true;
      },
      add: (n) => {
        if (released || n <= 0) return;
        mine += n;
        this.change(n);
      },
      release: () => {
        if (released) return;
        released = true;
        this.change(-mine);
        mine = 0;
        this.grantWaiting();
      },
    };
  }

  /**
   * A hold of n bytes once the budget has room for them. Rejects with BudgetWaitError after
   * `deadlineMs`, or when `signal` aborts (its client went away), leaving the queue.
   */
  wait(n: number, o: { deadlineMs: number; signal?: AbortSignal }): Promise<ByteHold> {
    if (n > this.limit) return Promise.reject(new BudgetWaitError(`${n} bytes can never fit a budget of ${this.limit}`));
    return new Promise((resolve, reject) => {
      const waiter = {
        n,
        grant: (h: ByteHold) => {
          clearTimeout(timer);
          o.signal?.removeEventListener('abort', onAbort);
          resolve(h);
        },
      };
      const leave = (message: string) => {
        const at = this.waiters.indexOf(waiter);
        if (at < 0) return;
        this.waiters.splice(at, 1);
        o.signal?.removeEventListener('abort', onAbort);
        clearTimeout(timer);
        reject(new BudgetWaitError(message));
        // the head of the queue may fit now that this one left it
        this.grantWaiting();
      };
      const onAbort = () => leave('the request was abandoned');
      if (o.signal?.aborted) return void reject(new BudgetWaitError('the request was abandoned'));
      const timer = setTimeout(() => leave(`no room for ${n} bytes in ${o.deadlineMs / 1000} s`), o.deadlineMs);
      o.signal?.addEventListener('abort', onAbort);
      this.waiters.push(waiter);
      this.grantWaiting();
    });
  }

  private grantWaiting(): void {
    while (this.waiters.length && this.held + this.waiters[0]!.n <= this.limit) {
      const w = this.waiters.shift()!;
      const h = this.hold();
      h.add(w.n);
      w.grant(h);
    }
  }

  private change(delta: number): void {
    this.held += delta;
    this.onChange(this.held);
  }
}

/**
 * One body (or one multipart part) as it arrives: its chunks, and the room they take in a
 * ByteBudget, taken for the declared length at once (`reserve`) or chunk by chunk (`push`).
 */
export class HeldBody {
  private chunks: Buffer[] = [];
  private readonly hold: ByteHold;
  private reserved = false;

  constructor(budget: ByteBudget) {
    this.hold = budget.hold();
  }

  /** Takes room for the whole body (its declared length) before it arrives: false when there is none. */
  reserve(n: number): boolean {
    this.reserved = this.hold.take(n);
    return this.reserved;
  }

  /** Keeps a chunk when its bytes fit (reserved, or room taken now); when they do not, drops everything kept and says false. */
  push(chunk: Buffer): boolean {
    if (!this.reserved && !this.hold.take(chunk.length)) {
      this.drop();
      return false;
    }
    this.chunks.push(chunk);
    return true;
  }

  /** The body in one buffer; its room stays held until `drop` (the image waits for its forward pass). */
  take(): Buffer {
    const body = Buffer.concat(this.chunks);
    this.chunks = [];
    return body;
  }

  /** Forgets the chunks and gives the room back; later calls do nothing. */
  drop(): void {
    this.chunks = [];
    this.hold.release();
  }
}
