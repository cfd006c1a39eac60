// The usage page: tokens per day as a stacked bar chart (uPlot, by key or model), the totals
// table, a date range and a CSV download.
import { $, el, fill, notify, number, row } from "./dom.js";
import { api, getJson } from "./session.js";

// One colour per series, 20 of them (the API sends at most 20): the page's first eight, then
// twelve picked one at a time as far as possible (CIELAB distance) from all before, none too
// light for a white page nor garish. No two are closer than a distance of 26 (a just-noticeable
// difference is about 2.3).
const COLORS = [
  "#2f5d8a", "#e07b39", "#3a9d6b", "#b84a62", "#7a5cb8", "#c9a227", "#2aa3b8", "#7f7f7f",
  "#e645e6", "#39bf39", "#4545e6", "#735f22", "#e6b88a", "#e667bb", "#75992e", "#e64545",
  "#734567", "#8aa8e6", "#733722", "#992e99",
];
let chart = null;

function usageQuery(extra) {
  const data = new FormData($("#usage-form"));
  const query = new URLSearchParams(extra);
  for (const name of ["since", "until"]) {
    const value = String(data.get(name) || "");
    if (value) query.set(name, value);
  }
  return query;
}

export async function loadUsage() {
  const stack = String(new FormData($("#usage-form")).get("stack") || "key");
  const [daily, totals] = await Promise.all([
    getJson("usage/daily?" + usageQuery({ stack })),
    getJson("usage?" + usageQuery({ by: stack })),
  ]);
  drawChart(daily);
  $("#usage-group").textContent = stack === "key" ? "Key" : "Model";
  const rows = totals.rows.map((item) =>
    row([item[stack] ?? "(none)", number(item.requests), number(item.prompt_tokens), number(item.completion_tokens), number(item.errors)]),
  );
  fill($("#usage-table tbody"), rows, "No usage in this range.", 5);
  const total = totals.total;
  $("#usage-table tfoot").replaceChildren(
    row(["Total", number(total.requests), number(total.prompt_tokens), number(total.completion_tokens), number(total.errors)]),
  );
}

function drawChart(daily) {
  const box = $("#usage-chart");
  if (chart) {
    chart.destroy();
    chart = null;
  }
  box.replaceChildren();
  $("#usage-empty").hidden = daily.days.length > 0;
  if (!daily.days.length) return;
  const xs = daily.days.map((day) => Date.parse(day + "T00:00:00Z") / 1000);
  // Stacked bars: each series is drawn up to the running sum; the top one first, so the
  // ones below paint over it. The legend shows each series' own value, not the sum: its total
  // for the range, or the day's under the cursor.
  const sums = new Array(xs.length).fill(0);
  const stacked = daily.series.map((series) => series.tokens.map((value, i) => (sums[i] += value)));
  const totals = daily.series.map((series) => series.tokens.reduce((sum, value) => sum + value, 0));
  const order = daily.series.map((_, i) => i).reverse();
  const bars = uPlot.paths.bars({ size: [0.6, 80], align: 0 });
  const day = 86400;
  const options = {
    width: Math.max(box.clientWidth - 24, 320), // inside the box's padding
    height: 320,
    legend: { live: true },
    cursor: { points: { show: false } },
    scales: {
      // Half a day either side, so a range of one day still shows a bar of sensible width.
      x: { time: true, range: [xs[0] - day / 2, xs[xs.length - 1] + day / 2] },
      y: { range: (u, min, max) => [0, Math.max(max * 1.1, 1)] },
    },
    axes: [
      {
        incrs: [day, 2 * day, 7 * day, 14 * day, 28 * day, 91 * day],
        values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(5, 10)),
        space: 50,
      },
      { values: (u, ticks) => ticks.map((t) => compact(t)), size: 60 },
    ],
    series: [
      { label: "Day", value: (u, t) => (t == null ? "Total" : new Date(t * 1000).toISOString().slice(0, 10)) },
      ...order.map((i) => ({
        label: daily.series[i].other ? "(others)" : daily.series[i].name ?? "(none)",
        fill: COLORS[i % COLORS.length],
        stroke: COLORS[i % COLORS.length],
        width: 0,
        paths: bars,
        points: { show: false },
        value: (u, v, si, idx) => number(idx == null ? totals[i] : daily.series[i].tokens[idx]),
      })),
    ],
  };
  chart = new uPlot(options, [xs, ...order.map((i) => stacked[i])], box);
}

function compact(value) {
  if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (value >= 1e3) return (value / 1e3).toFixed(1) + "k";
  return String(value);
}

export async function downloadCsv() {
  const stack = String(new FormData($("#usage-form")).get("stack") || "key");
  try {
    const response = await api("GET", "usage?" + usageQuery({ by: stack, format: "csv" }));
    const url = URL.createObjectURL(await response.blob());
    const link = el("a");
    link.href = url;
    link.download = "usage-by-" + stack + ".csv";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    notify(error.message, true);
  }
}

export function setUpUsage() {
  $("#usage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadUsage().catch((error) => notify(error.message, true));
  });
  $("#usage-csv").addEventListener("click", downloadCsv);
}
