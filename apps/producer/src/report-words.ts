import type { ReportDoc } from '@transferline/shared';

/**
 * The end of a report's coverage line (the CLI's report, the console's run page) for the prefixes a
 * --partial run left out because Redis lost its data and they were not ingested again.
 */
export function notIngestedAgain(coverage: ReportDoc['coverage'], show: (s: string) => string = (s) => s): string {
  const left = coverage.notIngestedAgain;
  return left?.length ? `; not ingested again to the end after Redis lost its data, so left out: ${left.map(show).join(', ')}` : '';
}
