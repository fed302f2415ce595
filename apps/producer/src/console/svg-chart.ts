import { html, type SafeHtml } from './html.js';

export interface Series {
  /** a short fixed name (it becomes a data attribute and the legend) */
  name: string;
  colour: string;
  dashed?: boolean;
  /** y per x; non-finite values are skipped */
  points: { x: number; y: number }[];
}

export interface LineChart {
  id: string;
  title: string;
  series: Series[];
  width?: number;
  height?: number;
  /** fixed y range (e.g. [0, 1] for accuracy); default: the data's own */
  yRange?: [number, number];
  /** an x to mark with a vertical line (the best epoch) */
  markX?: number;
}

/** Four ticks from lo to hi, shown with as few decimals as tell them apart. */
function ticks(lo: number, hi: number): { v: number; label: string }[] {
  const span = hi - lo;
  const decimals = span >= 10 ? 0 : span >= 1 ? 1 : span >= 0.1 ? 2 : 3;
  return [0, 1, 2, 3].map((i) => {
    const v = lo + (span * i) / 3;
    return { v, label: v.toFixed(decimals) };
  });
}

/**
 * An inline SVG line chart (no script, no external file): one polyline per series with a
 * `data-series` attribute and one `data-points` count, axes with a few ticks, a legend.
 */
export function lineChart(c: LineChart): SafeHtml {
  const width = c.width ?? 520;
  const height = c.height ?? 240;
  const pad = { left: 48, right: 12, top: 28, bottom: 30 };
  const all = c.series.flatMap((s) => s.points).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  if (all.length === 0) return html`<p class="muted" id="${c.id}">${c.title}: no data</p>`;
  const xs = all.map((p) => p.x);
  const ys = all.map((p) => p.y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = c.yRange ?? [Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const px = (x: number) => pad.left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const py = (y: number) => pad.top + (1 - (y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  const r = (n: number) => n.toFixed(1);
  const yTicks = ticks(y0, y1).map(
    (t) => html`<line x1="${pad.left}" x2="${width - pad.right}" y1="${r(py(t.v))}" y2="${r(py(t.v))}" stroke="#eceff2"/><text x="${pad.left - 6}" y="${r(py(t.v) + 4)}" text-anchor="end">${t.label}</text>`,
  );
  const xTicks = [...new Set([x0, Math.round((x0 + x1) / 2), x1])].map((x) => html`<text x="${r(px(x))}" y="${height - pad.bottom + 16}" text-anchor="middle">${x}</text>`);
  const lines = c.series.map((s) => {
    const pts = s.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
    return html`<polyline data-series="${s.name}" data-points="${pts.length}" fill="none" stroke="${s.colour}" stroke-width="2"${s.dashed ? html` stroke-dasharray="5 3"` : ''} points="${pts.map((p) => `${r(px(p.x))},${r(py(p.y))}`).join(' ')}"/>`;
  });
  const legend = c.series.map(
    (s, i) => html`<g transform="translate(${pad.left + 8 + i * 110},${pad.top - 12})"><line x1="0" x2="18" y1="0" y2="0" stroke="${s.colour}" stroke-width="2"${s.dashed ? html` stroke-dasharray="5 3"` : ''}/><text x="24" y="4">${s.name}</text></g>`,
  );
  const mark =
    c.markX !== undefined && c.markX >= x0 && c.markX <= x1
      ? html`<line data-mark="${c.markX}" x1="${r(px(c.markX))}" x2="${r(px(c.markX))}" y1="${pad.top}" y2="${height - pad.bottom}" stroke="#888" stroke-dasharray="2 3"/>`
      : '';
  return html`<svg id="${c.id}" role="img" aria-label="${c.title}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="system-ui,sans-serif" fill="#333">
<title>${c.title}</title>${yTicks}${xTicks}
<line x1="${pad.left}" x2="${pad.left}" y1="${pad.top}" y2="${height - pad.bottom}" stroke="#999"/><line x1="${pad.left}" x2="${width - pad.right}" y1="${height - pad.bottom}" y2="${height - pad.bottom}" stroke="#999"/>
${mark}${lines}${legend}<text x="${width - pad.right}" y="${height - 4}" text-anchor="end" fill="#777">epoch</text></svg>`;
}

/** A horizontal bar per row (failures by reason, images per label), as inline SVG. */
export function barChart(id: string, title: string, rows: { name: string; value: number }[], colour = '#4a78c2'): SafeHtml {
  if (rows.length === 0) return html``;
  const width = 520;
  const bar = 18;
  const labelW = 200;
  const height = rows.length * (bar + 6) + 8;
  const max = Math.max(...rows.map((x) => x.value), 1);
  const items = rows.map((row, i) => {
    const y = 4 + i * (bar + 6);
    const w = ((width - labelW - 60) * row.value) / max;
    const name = row.name.length > 32 ? `${row.name.slice(0, 31)}…` : row.name;
    return html`<g data-row="${i}"><text x="${labelW - 6}" y="${y + 13}" text-anchor="end">${name}</text><rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${bar}" fill="${colour}"/><text x="${(labelW + w + 6).toFixed(1)}" y="${y + 13}">${row.value}</text></g>`;
  });
  return html`<svg id="${id}" role="img" aria-label="${title}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" xmlns="http://www.w3.org/2000/svg" font-size="12" font-family="system-ui,sans-serif" fill="#333"><title>${title}</title>${items}</svg>`;
}
