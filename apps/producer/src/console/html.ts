/**
 * Server-rendered HTML for the console's own pages. Every interpolation in an `html` template is
 * escaped unless it is already `SafeHtml` (another template's output): labels, object keys and
 * failure messages come from users and can be anything (`<script>`, `__proto__`, quotes), so
 * escaping is the default and opting out needs a template, never a plain string.
 */
export class SafeHtml {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text made safe for element content and for quoted attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ENTITIES[c]!);
}

function render(v: unknown): string {
  if (v instanceof SafeHtml) return v.value;
  if (Array.isArray(v)) return v.map(render).join('');
  if (v === undefined || v === null || v === false) return '';
  return escapeHtml(String(v));
}

/** A template whose interpolations are escaped (arrays are joined, `undefined`/`null`/`false` render as nothing). */
export function html(strings: TemplateStringsArray, ...values: unknown[]): SafeHtml {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1]!;
  return new SafeHtml(out);
}

/** A path segment of one of our URLs (dataset names and run ids are restricted, but never trusted). */
export const seg = (s: string): string => encodeURIComponent(s);

/** "0.3 s", "15 s" */
export const seconds = (ms: number): string => `${ms < 10_000 ? Number((ms / 1000).toFixed(1)) : Math.round(ms / 1000)} s`;

/** 0.8333 → "83.3%"; undefined → "–". */
export function pct(x: number | undefined): string {
  return x === undefined || !Number.isFinite(x) ? '–' : `${(x * 100).toFixed(1)}%`;
}

/** A figure with three decimals, for precision/recall/F1 and losses. */
export function fixed3(x: number): string {
  return Number.isFinite(x) ? x.toFixed(3) : String(x);
}

const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1d232b;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:baseline;flex-wrap:wrap}
header a{color:#cfe3ff;text-decoration:none}header strong{font-size:1.05rem;margin-right:.6rem}
header .mode{margin-left:auto;font-size:.85rem;color:#b8c2cf}
main{padding:1rem 1.2rem;max-width:1200px}
h1{font-size:1.3rem;margin:.2rem 0 1rem}h2{font-size:1.05rem;margin:1.6rem 0 .5rem}
table{border-collapse:collapse;background:#fff;margin:.3rem 0 1rem}
th,td{border:1px solid #d8dde3;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#69737f}.bad{color:#b3261e}.ok{color:#1b6e2b}
.cards{display:flex;gap:.6rem;flex-wrap:wrap;margin:.4rem 0 1rem}
.card{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:.45rem .8rem;min-width:6.5rem}
.card b{display:block;font-size:1.35rem;font-variant-numeric:tabular-nums}
.charts{display:flex;gap:1rem;flex-wrap:wrap}
svg{background:#fff;border:1px solid #d8dde3}
code{font:12px ui-monospace,monospace;background:#eef1f4;padding:0 .25rem;border-radius:3px;word-break:break-all}
.label{white-space:pre-wrap;word-break:break-word}
`;

/** Where the queue boards are mounted: bull-board read-only, and with actions behind the password. */
export const BOARD_PATHS = { readOnly: '/queues', admin: '/admin/queues' } as const;

export interface Shell {
  title: string;
  /** whether a password is configured (the admin board exists) */
  actionsConfigured: boolean;
}

/** What a page needs to know of the console's access mode. */
export type Access = Omit<Shell, 'title'>;

/** The page around a body: header with navigation, the console's access mode, inline CSS, no scripts. */
export function page(shell: Shell, body: SafeHtml): string {
  const mode = !shell.actionsConfigured
    ? html`read-only (set TL_CONSOLE_PASSWORD to enable queue actions)`
    : html`read-only here; <a href="${BOARD_PATHS.admin}/" id="sign-in">queue actions (sign in)</a>`;
  return html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>${shell.title} · transferline</title><style>${new SafeHtml(CSS)}</style></head>
<body><header><strong>transferline</strong><a href="/">datasets &amp; models</a><a href="${BOARD_PATHS.readOnly}/">queues</a><span class="mode" id="mode">${mode}</span></header>
<main>${body}</main></body></html>
`.value;
}
