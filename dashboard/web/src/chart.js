// Shared uPlot setup: uPlot's own tick spacing and time formatting, the
// unit once as the y axis label (not on every tick), the dashboard's time
// zone choice on the x axis, colours from the CSS theme.
import uPlot from 'uplot';
import { useUTC } from './util.js';

export function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// uPlot's own time-axis table (tick increment → template), in 24-hour
// time and ISO dates, matching the rest of the dashboard. The second to
// eighth fields are the label used where a tick crosses into a new year,
// month, day, hour, minute or second.
const TIME_TICKS = [
  [3600 * 24 * 365, '{YYYY}', null, null, null, null, null, null, 1],
  [3600 * 24 * 28, '{MMM}', '\n{YYYY}', null, null, null, null, null, 1],
  [3600 * 24, '{MMM} {D}', '\n{YYYY}', null, null, null, null, null, 1],
  [3600, '{HH}:{mm}', '\n{YYYY}-{MM}-{DD}', null, '\n{MMM} {D}', null, null, null, 1],
  [60, '{HH}:{mm}', '\n{YYYY}-{MM}-{DD}', null, '\n{MMM} {D}', null, null, null, 1],
  [1, '{HH}:{mm}:{ss}', '\n{YYYY}-{MM}-{DD}', null, '\n{MMM} {D}', null, null, null, 1],
  [0.001, ':{ss}.{fff}', '\n{YYYY}-{MM}-{DD}', null, '\n{MMM} {D}', null, '\n{HH}:{mm}', null, 1],
];

const utcDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC');

// plotOpts: series is [{label, stroke?}], band adds a min/max band from the
// last two series.
export function plotOpts({ width, height, unit, series, band, fmtTick }) {
  const fg = cssVar('--muted', '#667');
  const grid = cssVar('--grid', 'rgba(128,128,128,.15)');
  const accent = cssVar('--accent', '#2563eb');
  const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  const o = {
    width, height,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: true },
      // A flat or single-valued series gets a narrow band around its value
      // (uPlot's default spans from 0, squashing 90.7 % into a line).
      y: { range: (u, min, max) => (min === null || max === null ? [0, 1] : min === max ? [min - Math.max(1, Math.abs(min) * 0.05), max + Math.max(1, Math.abs(max) * 0.05)] : uPlot.rangeNum(min, max, 0.1, true)) },
    },
    series: [{}, ...series.map((s, i) => ({
      label: s.label,
      stroke: s.stroke || (i === 0 ? accent : 'transparent'),
      width: 1.5,
      // uPlot's default shows points only where data is sparse (a single
      // reading would otherwise draw nothing); band edges never.
      ...(s.stroke === 'transparent' || i > 0 ? { points: { show: false } } : {}),
      spanGaps: !!s.spanGaps,
    }))],
    axes: [
      { ...axis, space: 70, values: TIME_TICKS },
      { ...axis, space: 28, size: 56, label: unit || undefined, labelSize: unit ? 18 : 0, labelGap: 0,
        ...(fmtTick ? { values: (u, vs) => vs.map(fmtTick) } : {}) },
    ],
  };
  if (band) o.bands = [{ series: [series.length, series.length - 1], fill: cssVar('--band', 'rgba(37,99,235,.18)') }];
  if (useUTC()) o.tzDate = utcDate;
  return o;
}

export { uPlot };
