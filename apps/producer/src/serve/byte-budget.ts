/** Bytes one request (or one part of it) holds of a ByteBudget. */
export interface ByteHold {
  /** Adds n bytes if the budget has room: false (and nothing taken) when it has not. */
  take: (n: number) => boolean;
  /** Keeps only n bytes of what is held (a reservation for the worst case, once the real size is known). */
  shrinkTo: (n: number) => void;
  /** Gives everything back; later calls do nothing. */
  release: () => void;
}

/**
 * The image bytes `serve` holds at once (bodies arriving, images waiting for their forward pass),
 * across requests: the admission count alone bounds images, and each may be 64 MB. Bodies that
 * clients send take as they arrive and are refused past the budget (503: retry); reads the server
 * makes itself (s3:// keys) wait their turn for room instead.
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
        if (released || this.held + n > this.limit) return false;
        mine += n;
        this.change(n);
        return true;
      },
      shrinkTo: (n) => {
        if (released || n >= mine) return;
        this.change(n - mine);
        mine = n;
        this.grantWaiting();
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

  /** A hold of n bytes, once the budget has room for them (first come, first served). */
  wait(n: number): Promise<ByteHold> {
    if (n > this.limit) return Promise.reject(new Error(`${n} bytes can never fit a budget of ${this.limit}`));
    return new Promise((grant) => {
      this.waiters.push({ n, grant });
      this.grantWaiting();
    });
  }

  private grantWaiting(): void {
    while (this.waiters.length && this.held + this.waiters[0]!.n <= this.limit) {
      const w = this.waiters.shift()!;
      const h = this.hold();
      h.take(w.n);
      w.grant(h);
    }
  }

  private change(delta: number): void {
    this.held += delta;
    this.onChange(this.held);
  }
}
