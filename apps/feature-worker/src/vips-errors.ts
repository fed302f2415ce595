/**
 * libvips keeps one error buffer per process, shared by every image decoding at once, and sharp
 * reads it when an image fails (lovell/sharp#902, libvips/libvips#707). When two images fail
 * close together, each can get the other's lines, both, or none ("Unknown error"): measured here,
 * a quarter of the failures in a mix of bad images decoded 16 at a time came back with another
 * image's message, and some with its reason code (a corrupt PNG recorded as `truncated`).
 *
 * So a failed decode whose failure may be mixed with another's is run again, alone: first every
 * decode that overlapped it settles; if none of them failed, the buffer held only this image's
 * lines and the error stands. Otherwise new decodes wait while the in-flight ones finish and this
 * one runs by itself, and what it says then is its own. Successful decodes (nearly all of them)
 * pay nothing but the bookkeeping; a failure pays a second decode only when another failed beside
 * it, and bad images fail fast (a header, or the bytes up to where they break off).
 */
interface Decode {
  failed: boolean;
  settled: Promise<void>;
  settle: () => void;
  /** Decodes that were in flight at some moment while this one was. */
  peers: Set<Decode>;
}

export class VipsErrorAttribution {
  private readonly live = new Set<Decode>();
  /** A failed decode being run again by itself: no other decode starts meanwhile. */
  private alone: Promise<unknown> | undefined;
  /** Decodes run again alone (tests and logs can tell that attribution happened). */
  rerunsAlone = 0;

  /**
   * Runs `decode`, and on failure decides whether its error is its own. `ownFailure` says of an
   * error that it cannot have come from another image (e.g. a timeout this decode lived long
   * enough to reach), so it stands without a second run.
   */
  async run<T>(decode: () => Promise<T>, ownFailure: (err: unknown) => boolean = () => false): Promise<T> {
    while (this.alone) await this.alone.catch(() => undefined);
    let settle!: () => void;
    const settled = new Promise<void>((resolve) => (settle = resolve));
    const me: Decode = { failed: false, settled, settle, peers: new Set(this.live) };
    for (const peer of this.live) peer.peers.add(me);
    this.live.add(me);
    try {
      return await decode();
    } catch (err) {
      me.failed = true;
      this.end(me); // before waiting on peers: a peer that failed too waits on this one
      if (ownFailure(err)) throw err;
      await Promise.all([...me.peers].map((p) => p.settled));
      if (![...me.peers].some((p) => p.failed)) throw err;
      return await this.runAlone(decode);
    } finally {
      this.end(me);
      me.peers.clear(); // or every decode would hold the ones before it, for ever
    }
  }

  private end(d: Decode): void {
    if (this.live.delete(d)) d.settle();
  }

  private async runAlone<T>(decode: () => Promise<T>): Promise<T> {
    while (this.alone) await this.alone.catch(() => undefined);
    const run = (async () => {
      while (this.live.size > 0) await Promise.all([...this.live].map((d) => d.settled));
      this.rerunsAlone++;
      return decode();
    })();
    this.alone = run;
    try {
      return await run;
    } finally {
      if (this.alone === run) this.alone = undefined;
    }
  }
}
