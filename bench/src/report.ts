import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** One measured figure, optionally compared with its ceiling measured in the same run. */
export interface Row {
  name: string;
  value: number;
  unit: string;
  /** the ceiling's row name, and value / ceiling */
  vs?: string;
  ratio?: number;
  target?: string;
  note?: string;
}

export interface SuiteResult {
  suite: string;
  startedAt: string;
  machine: { cpus: number; model: string; node: string };
  rows: Row[];
  details?: Record<string, unknown>;
}

export const resultsDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'results');

export function machine(): SuiteResult['machine'] {
  return { cpus: os.availableParallelism(), model: os.cpus()[0]?.model ?? 'unknown', node: process.version };
}

/** Adds `ratio` to rows that name a ceiling in the same result. */
export function withRatios(rows: Row[]): Row[] {
  return rows.map((r) => {
    const ceiling = r.vs ? rows.find((c) => c.name === r.vs) : undefined;
    // (a row may give its own ratio: the median of paired rounds, say, not the ratio of medians)
    return ceiling && ceiling.value > 0 ? { ...r, ratio: r.ratio ?? r.value / ceiling.value } : r;
  });
}

export function table(result: SuiteResult): string {
  const head = ['figure', 'value', 'unit', 'vs', 'ratio', 'target', 'note'];
  const lines = result.rows.map((r) => [r.name, r.value >= 100 ? r.value.toFixed(0) : r.value.toPrecision(3), r.unit, r.vs ?? '', r.ratio !== undefined ? `${r.ratio.toFixed(2)}×` : '', r.target ?? '', r.note ?? '']);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [`## ${result.suite}`, fmt(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...lines.map(fmt)].join('\n');
}

export async function save(result: SuiteResult): Promise<string> {
  await mkdir(resultsDir, { recursive: true });
  const file = path.join(resultsDir, `${result.suite}.json`);
  await writeFile(file, `${JSON.stringify(result, null, 2)}\n`);
  return file;
}

/** Calls `fn` until at least `minSeconds` have passed; returns runs and total seconds. */
export async function timeAtLeast(minSeconds: number, fn: () => Promise<number>): Promise<{ items: number; seconds: number }> {
  const start = performance.now();
  let items = 0;
  do items += await fn();
  while ((performance.now() - start) / 1000 < minSeconds);
  return { items, seconds: (performance.now() - start) / 1000 };
}

/** A process's peak resident memory (VmHWM, MiB) from /proc: the kernel's own high-water mark, not a sample. */
export function peakRssMb(pid: number = process.pid): number | undefined {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system, all threads) a process has used so far, from /proc; 0 once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}
const CLOCK_TICKS = 100; // USER_HZ: 100 on every Linux architecture Node runs on

/** Whether processes can be pinned to cores here (Linux with util-linux's taskset). */
export const canPin = process.platform === 'linux' && spawnSync('taskset', ['-V'], { stdio: 'ignore' }).status === 0;

/** The CPUs this process may run on as it was started (taskset's list syntax), to give back after pinning it; '' without taskset. */
export const OWN_CPUS = canPin ? execFileSync('taskset', ['-c', '-p', String(process.pid)], { encoding: 'utf8' }).split(':').pop()!.trim() : '';

/**
 * Pins every thread a process has to `cpus` (taskset's list syntax: "0", "1", "0-1"); threads
 * it starts later inherit the setting from the thread that starts them.
 */
export function pinProcess(pid: number, cpus: string): void {
  execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
}

/** Polls until `done` holds; throws after `seconds` (a worker that died must not hold the bench open). */
export async function until(what: string, done: () => Promise<boolean>, seconds = 600, everyMs = 20): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`bench: gave up after ${seconds} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
