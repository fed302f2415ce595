import { PROCESS_NAME } from '@transferline/shared';
import type { CliContext } from './cli-context.js';

/** How long a command's hold on a run lasts without being renewed (a command killed with -9 lets go by then). */
const LEASE_MS = 90_000;
/** The same, as the refusals say it. */
export const LEASE_SECONDS = LEASE_MS / 1000;
/** How often a command renews its hold. */
const RENEW_MS = 30_000;

/** A command that uses a trained run, as `delete run` and `delete dataset --runs` are told of it. */
export interface ModelUser {
  runId: string;
  /** host:pid:… of the command */
  holder: string;
  /** what it does with the run ("classify s3://photos/incoming/ --watch") */
  what: string;
  /** when it began (ISO) */
  since: string;
}

/** Redis's clock in ms: the leases of commands on several machines are timed by one clock. */
async function redisNow(ctx: Pick<CliContext, 'services'>): Promise<number> {
  const [s, us] = await ctx.services.redis.time();
  return Number(s) * 1000 + Math.floor(Number(us) / 1000);
}

/**
 * Holds `dataset@runId` for a command that uses it for long (classify embeds the images it labels
 * before its classify job is queued: a trial's `delete run` went through meanwhile, and the
 * classify failed at its end, `no-model`, hours of embedding later). Renewed every RENEW_MS while
 * the command runs; released at its end; a command killed without its end lets go after LEASE_MS.
 * A renewal that fails (Redis away) is tried again at the next; the command's own waits say the outage.
 */
export async function holdModel(ctx: Pick<CliContext, 'services'>, dataset: string, runId: string, what: string): Promise<{ release: () => Promise<void> }> {
  const key = ctx.services.keys.modelUsers(dataset);
  const member = JSON.stringify({ runId, holder: PROCESS_NAME, what, since: new Date().toISOString() } satisfies ModelUser);
  const renew = async () => {
    const until = (await redisNow(ctx)) + LEASE_MS;
    await ctx.services.redis.multi().zadd(key, until, member).pexpire(key, LEASE_MS * 2).exec();
  };
  await renew();
  const timer = setInterval(() => void renew().catch(() => undefined), RENEW_MS);
  timer.unref();
  return {
    release: async () => {
      clearInterval(timer);
      await ctx.services.redis.zrem(key, member).catch(() => undefined);
    },
  };
}

/** The commands that hold a run of `dataset` now (`runId`'s alone when given); held leases past their time are dropped. */
export async function modelUsers(ctx: Pick<CliContext, 'services'>, dataset: string, runId?: string): Promise<ModelUser[]> {
  const key = ctx.services.keys.modelUsers(dataset);
  await ctx.services.redis.zremrangebyscore(key, '-inf', `(${await redisNow(ctx)}`);
  const users: ModelUser[] = [];
  for (const raw of await ctx.services.redis.zrange(key, 0, -1)) {
    try {
      const u = JSON.parse(raw) as ModelUser;
      if (runId === undefined || u.runId === runId) users.push(u);
    } catch {
      // (not one of ours: left for its lease to end)
    }
  }
  return users;
}
