import cliProgress from 'cli-progress';

/**
 * A progress bar on a terminal; on anything else (CI logs, pipes) a plain line every few
 * seconds, so logs stay readable.
 */
export interface Progress {
  /** `now`: a line that must show at once (a change of phase), not only every few seconds */
  update(value: number, total: number, detail: string, now?: boolean): void;
  stop(): void;
}

export function createProgress(label: string, stream: NodeJS.WriteStream = process.stderr): Progress {
  if (stream.isTTY) {
    const bar = new cliProgress.SingleBar(
      { format: `${label} |{bar}| {value}/{total} {detail}`, hideCursor: true, stream, etaBuffer: 50 },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(value, total, detail) {
        if (!started) {
          bar.start(total, value, { detail });
          started = true;
        } else {
          bar.setTotal(total);
          bar.update(value, { detail });
        }
      },
      stop: () => started && bar.stop(),
    };
  }
  let last = 0;
  let lastLine = '';
  return {
    update(value, total, detail, now = false) {
      const line = `${label}: ${value}/${total} ${detail}`;
      if (line !== lastLine && (now || Date.now() - last > 2000 || value === total)) {
        stream.write(`${line}\n`);
        last = Date.now();
        lastLine = line;
      }
    },
    stop: () => {},
  };
}
