import { withDeadline } from './lifecycle.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';
import { S3CredentialsError, slowRequestAfterMs, type ObjectStore } from './s3.client.js';
import { redactUrl } from './redact.js';

/**
 * Tells an outage of a dependency (S3 down, unreachable, answering 5xx to everything, refusing
 * this process's credentials) from an
 * error of one item, so that outages are waited out instead of burning every job's attempts.
 * When a job fails with a transient error, the wiring asks `isOutage`: a probe of the dependency
 * (a cheap request that needs nothing of the item) decides. While it is down, the guard probes
 * every `intervalMs`, reports `tl_dependency_up{dependency} 0` and one log line, and calls its
 * listeners (the worker pauses); when a probe succeeds it says so and they resume.
 */
export class DependencyGuard {
  private down = false;
  private downSince = 0;
  private probing: Promise<boolean> | undefined;
  /** when a probe last succeeded (performance.now()) */
  private answeredAt = Number.NEGATIVE_INFINITY;
  /** why the last probe failed */
  private probeError: unknown;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly listeners: ((up: boolean) => void)[] = [];

  constructor(
    readonly name: string,
    private readonly probe: () => Promise<void>,
    private readonly log: Logger,
    private readonly metrics: Pick<Metrics, 'dependencyUp'>,
    private readonly o: { intervalMs?: number; probeTimeoutMs?: number; what?: string } = {},
  ) {
    metrics.dependencyUp.set({ dependency: name }, 1);
  }

  get up(): boolean {
    return !this.down;
  }

  /** What is wrong while it is down, in words ("S3 at … is unreachable", or the credentials refused). */
  get reason(): string {
    return this.refusesCredentials ? (this.probeError as Error).message : `${this.o.what ?? this.name} is unreachable`;
  }

  /**
   * Down because it refuses this process's credentials: this process reads them once, at start,
   * so only a restart with others mends it (its /healthz says so; a key enabled again on the
   * server side also ends the pause).
   */
  get refusesCredentials(): boolean {
    return this.down && this.probeError instanceof S3CredentialsError;
  }

  /** What ends the pause, in words. */
  get remedy(): string {
    return this.refusesCredentials ? 'restart them with credentials S3 accepts' : 'they resume by themselves when that is mended';
  }

  /** Called with false when the dependency goes down and true when it is back. */
  onChange(listener: (up: boolean) => void): void {
    this.listeners.push(listener);
  }

  /** After a transient error: is the dependency itself down? (Probes once; concurrent callers share the probe.) */
  async isOutage(err: unknown): Promise<boolean> {
    if (this.down) return true;
    const ok = await this.check();
    if (!ok && !this.down && !this.closed) this.goDown(err);
    return !ok;
  }

  /**
   * A hint that it may be down (a request to it has gone unanswered): probes, unless it is known
   * down, this guard is closed, or a probe was answered within `freshMs` (a busy, slow S3 is not
   * probed after each slow request). False when it did not probe for that last reason.
   */
  suspect(why: unknown, freshMs: number): boolean {
    if (this.closed || this.down) return true;
    if (performance.now() - this.answeredAt < freshMs) return false;
    void this.isOutage(why);
    return true;
  }

  /**
   * At a worker's start: a dependency that refuses this process's credentials will refuse every
   * request until the settings are changed, so the worker does not start (the error says which
   * settings). Any other failure of the probe is an outage from the start: said, and probed until
   * it ends (a review: it stayed "up", so `/readyz` said ready, until a job met it).
   */
  async checkAtStart(): Promise<void> {
    if (await this.check()) return;
    if (this.probeError instanceof S3CredentialsError) throw this.probeError;
    if (!this.down && !this.closed) this.goDown(this.probeError);
  }

  private check(): Promise<boolean> {
    this.probing ??= withDeadline(this.probe(), this.o.probeTimeoutMs ?? 5_000)
      .then(
        () => ((this.answeredAt = performance.now()), true),
        (err: unknown) => ((this.probeError = err), false),
      )
      .finally(() => (this.probing = undefined));
    return this.probing;
  }

  private goDown(err: unknown): void {
    this.down = true;
    this.downSince = Date.now();
    this.metrics.dependencyUp.set({ dependency: this.name }, 0);
    // Credentials refused (rotated, say) are an outage of this process, not of its jobs.
    this.log.warn(
      { dependency: this.name, err: (err as Error)?.message },
      `${this.reason}: pausing work that needs it, probing every ${((this.o.intervalMs ?? 2_000) / 1000).toFixed(0)} s; jobs keep their attempts`,
    );
    for (const l of this.listeners) l(false);
    const tick = () => {
      if (this.closed) return;
      void this.check().then((ok) => {
        if (this.closed) return;
        if (!ok) {
          this.timer = setTimeout(tick, this.o.intervalMs ?? 2_000);
          return;
        }
        this.down = false;
        this.metrics.dependencyUp.set({ dependency: this.name }, 1);
        this.log.info({ dependency: this.name, downSeconds: Math.round((Date.now() - this.downSince) / 1000) }, `${this.o.what ?? this.name} is back: resuming`);
        for (const l of this.listeners) l(true);
      });
    };
    this.timer = setTimeout(tick, this.o.intervalMs ?? 2_000);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }
}

/**
 * The S3 guard every worker role runs: an S3 outage pauses its work, and credentials S3 refuses
 * keep it from starting (checkAtStart). A request that goes unanswered (slowRequestAfterMs) asks
 * the probe at once, unless one was answered as recently: a wedged S3, which takes connections
 * and answers nothing, holds each request for all its attempts (minutes at the default idle
 * timeout) before it fails, and only then would the outage be seen (tl_dependency_up, the pause).
 */
export async function startS3Guard(
  store: Pick<ObjectStore, 'probe' | 'onSlowRequest'>,
  s3: { bucket: string; endpoint: string; idleTimeoutMs?: number },
  log: Logger,
  metrics: Pick<Metrics, 'dependencyUp'>,
): Promise<DependencyGuard> {
  const guard = new DependencyGuard('s3', () => store.probe(s3.bucket), log, metrics, { what: `S3 at ${redactUrl(s3.endpoint)}` });
  const afterMs = slowRequestAfterMs(s3.idleTimeoutMs);
  store.onSlowRequest(afterMs, () => guard.suspect(new Error(`a request had no answer for ${afterMs / 1000} s`), afterMs));
  await guard.checkAtStart();
  return guard;
}
