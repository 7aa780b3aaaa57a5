//! The HTML report of a run: one self-contained file (inline CSS, JavaScript and SVG; nothing
//! fetched), to open in any browser.
//!
//! The verdict, the seed, the replay command, the fault counts and every violation (its key,
//! what is impossible about it, the operations involved) are plain HTML, readable without
//! JavaScript. The script draws, from the history embedded as JSON: throughput, p99 latency and
//! injected faults per second, and a timeline of one key at a time — a row per client, a bar
//! from call to return coloured by outcome, the operations of a violation outlined and its
//! window shaded. A key and a time window are picked with the controls (or by a violation's
//! "show" button), so histories of hundreds of thousands of operations stay usable: at most
//! [`MAX_BARS`] bars are drawn at once, and the page says when to zoom in.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use serde::Serialize;

use super::{
    FaultSample, RunReport,
    checker::{FINAL_STATE, Violation},
    history::{Op, OpKind, PutResult},
};

/// The most bars the timeline draws at once.
const MAX_BARS: usize = 20_000;

#[derive(Serialize)]
struct Data<'a> {
    keys: Vec<&'a str>,
    clients: Vec<&'a str>,
    /// `[client, key, call µs, return µs, kind, version, recovered]`; kind: 0 found, 1 not
    /// found, 2 written, 3 refused, 4 maybe; recovered 1 when an attempt's answer was lost.
    ops: Vec<[u64; 7]>,
    violations: Vec<Window>,
    /// `[second, operations returned in it, their p99 in µs]`.
    seconds: Vec<[u64; 3]>,
    /// `[seconds since the start, answers dropped so far, requests dropped so far]`.
    faults: Vec<(f64, u64, u64)>,
    /// The fault schedule: `[from µs, to µs, paused]`.
    phases: Vec<(u64, u64, bool)>,
    max_bars: usize,
}

#[derive(Serialize)]
struct Window {
    key: usize,
    reason: String,
    from: u64,
    to: u64,
    ops: Vec<usize>,
}

fn kind(op: &Op) -> (u64, u64, u64) {
    match &op.kind {
        OpKind::Get(Some((_, version))) => (0, *version, 0),
        OpKind::Get(None) => (1, 0, 0),
        OpKind::Put {
            outcome, recovered, ..
        } => match *outcome {
            PutResult::Written(version) => (2, version, u64::from(*recovered)),
            PutResult::Refused { actual } => (3, actual, 0),
            PutResult::Maybe => (4, 0, 0),
        },
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn data<'a>(
    report: &'a RunReport,
    ops: &'a [Op],
    violations: &'a [Violation],
    samples: &[FaultSample],
) -> Data<'a> {
    // Every key with an operation or a violation, so each violation has its window (and the
    // "show" buttons, numbered like the violations, line up).
    let mut keys: Vec<&str> = ops
        .iter()
        .map(|op| op.key.as_str())
        .chain(violations.iter().map(|v| v.key.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let key_index: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let us = |ns: u64| ns / 1_000;
    let encoded: Vec<[u64; 7]> = ops
        .iter()
        .map(|op| {
            let (kind, version, recovered) = kind(op);
            let key = key_index[op.key.as_str()] as u64;
            let (call, ret) = (us(op.call), us(op.ret));
            [op.client as u64, key, call, ret, kind, version, recovered]
        })
        .collect();
    let index: HashMap<(usize, &str, u64, u64), usize> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| ((op.client, op.key.as_str(), op.call, op.ret), i))
        .collect();
    let windows = violations
        .iter()
        .filter_map(|v| {
            let key = *key_index.get(v.key.as_str())?;
            let real: Vec<&Op> = v.ops.iter().filter(|op| op.client != FINAL_STATE).collect();
            let from = real.iter().map(|op| op.call).min().unwrap_or(0);
            let to = real.iter().map(|op| op.ret).max().unwrap_or(from);
            let ops = real
                .iter()
                .filter_map(|op| index.get(&(op.client, op.key.as_str(), op.call, op.ret)))
                .copied()
                .collect();
            Some(Window {
                key,
                reason: v.reason.clone(),
                from: us(from),
                to: us(to),
                ops,
            })
        })
        .collect();
    let mut per_second: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    // A last second cut short by the end of the run would read as a collapse: leave it out.
    let whole_seconds = report.duration_secs.floor() as u64;
    for op in ops
        .iter()
        .filter(|op| op.ret / 1_000_000_000 < whole_seconds.max(1))
    {
        per_second
            .entry(op.ret / 1_000_000_000)
            .or_default()
            .push(us(op.ret - op.call));
    }
    let seconds = per_second
        .into_iter()
        .map(|(second, mut latencies)| {
            latencies.sort_unstable();
            let p99 = super::report::percentile(&latencies, 0.99);
            [second, latencies.len() as u64, p99]
        })
        .collect();
    Data {
        keys,
        clients: report.clients.iter().map(|c| c.name.as_str()).collect(),
        ops: encoded,
        violations: windows,
        seconds,
        faults: samples
            .iter()
            .map(|s| (s.at, s.responses_dropped, s.requests_dropped))
            .collect(),
        phases: report
            .schedule
            .iter()
            .map(|p| {
                let us = |secs: f64| (secs * 1e6) as u64;
                (us(p.at), us(p.at + p.duration), p.pause)
            })
            .collect(),
        max_bars: MAX_BARS,
    }
}

/// The report page of a run.
pub(crate) fn render(
    report: &RunReport,
    ops: &[Op],
    violations: &[Violation],
    samples: &[FaultSample],
    replay: &str,
) -> String {
    let data = serde_json::to_string(&data(report, ops, violations, samples))
        .expect("report data serializes")
        // Inside <script>, "</" could end the element and "<!--" change how it is parsed:
        // no "<", ">" or "&" is left in the JSON text (the escapes mean the same to JSON).
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let mut page = String::new();
    let verdict_class = if report.passed() { "pass" } else { "fail" };
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Chaos run, seed {seed}: {verdict}</title>
<style>{STYLE}</style></head>
<body>
<h1 id="verdict" class="{verdict_class}">{verdict}</h1>
<p>Seed <b id="seed">{seed}</b>. Replay: <code id="replay">{replay}</code></p>
<p>{ops} operations on {keys} keys in {secs:.1} s. Faults injected: {resp} answers dropped after
the write was applied, {req} requests dropped by the clients{scheduled}.{unknowns}</p>
"#,
        seed = report.seed,
        verdict = escape(&report.verdict()),
        replay = escape(replay),
        ops = report.checked_ops,
        keys = report.checked_keys,
        secs = report.duration_secs,
        resp = report.server_responses_dropped,
        req = report.client_requests_dropped,
        scheduled = if report.schedule.is_empty() {
            String::new()
        } else {
            format!(
                ", {} calls held or dropped by the fault schedule",
                report.scheduled_faults
            )
        },
        unknowns = report
            .unknowns()
            .map(|u| format!(" {}.", escape(&u)))
            .unwrap_or_default(),
    );
    let mut list = String::new();
    if !violations.is_empty() || !report.invariant_violations.is_empty() {
        list.push_str("<h2>Violations</h2>\n<ol id=\"violations\">\n");
        for (i, v) in violations.iter().enumerate() {
            let _ = writeln!(
                list,
                "<li class=\"violation\" data-key=\"{key}\"><b>key {key}</b>: {reason} \
                 <button onclick=\"showViolation({i})\">show</button><pre>{ops}</pre></li>",
                key = escape(&v.key),
                reason = escape(&v.reason),
                ops = escape(&v.to_string()),
            );
        }
        for problem in &report.invariant_violations {
            let _ = writeln!(list, "<li class=\"invariant\">{}</li>", escape(problem));
        }
        list.push_str("</ol>\n");
    }
    let _ = write!(
        page,
        r#"<h2>Timeline</h2>
<div id="controls">key <select id="key"></select>
from <input id="from" size="9"> ms to <input id="to" size="9"> ms
<button id="apply">apply</button> <button id="zoomin">zoom in</button>
<button id="zoomout">zoom out</button> <button id="all">whole run</button></div>
<p id="notice"></p>
<div id="legend"><span class="k0">read, found</span> <span class="k1">read, not found</span>
<span class="k2">written</span> <span class="k3">refused</span> <span class="k4">unknown (maybe)</span>
<span class="kv">part of a violation</span> <span class="kp">fault phase (schedule)</span>
<span class="kf">&#9679; answer lost to a fault, recovered by replay</span></div>
<p id="focus"></p>
<svg id="timeline" width="1100" height="100"></svg>
<h2>Over time</h2>
<svg id="rates" width="1100" height="190"></svg>
{list}
<script type="application/json" id="data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"#
    );
    page
}

const STYLE: &str = r#"
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1.pass { color: #1a7f37; } h1.fail { color: #cf222e; }
pre { background: #f6f8fa; padding: .5em; overflow-x: auto; }
li.violation { margin-bottom: 1em; }
svg { border: 1px solid #ddd; background: #fff; display: block; }
#legend span { padding: 0 .5em; border-left: 1.2em solid; margin-right: .8em; }
.k0 { border-color: #0969da !important; } .k1 { border-color: #8cc8ff !important; }
.k2 { border-color: #1a7f37 !important; } .k3 { border-color: #fb8500 !important; }
.k4 { border-color: #8250df !important; } .kv { border-color: #cf222e !important; }
.kp { border-color: #f2e3b3 !important; } .kf { border: none !important; color: #8250df; }
circle.fault { fill: #8250df; stroke: #fff; stroke-width: 1; }
rect.violation { stroke: #cf222e; stroke-width: 2; }
rect.window { fill: #cf222e; fill-opacity: .08; }
rect.phase { fill: #bf8700; fill-opacity: .12; }
#focus { color: #cf222e; font-weight: 600; }
text { font: 11px system-ui, sans-serif; fill: #555; }
"#;

const SCRIPT: &str = r#"
const D = JSON.parse(document.getElementById('data').textContent);
const COLORS = ['#0969da', '#8cc8ff', '#1a7f37', '#fb8500', '#8250df'];
const KINDS = ['read, found', 'read, not found', 'written', 'refused', 'unknown (maybe)'];
const NS = 'http://www.w3.org/2000/svg';
function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
const byKey = D.keys.map(() => []);
D.ops.forEach((op, i) => byKey[op[1]].push(i));
const inViolation = new Set();
D.violations.forEach(v => v.ops.forEach(i => inViolation.add(i)));
const end = D.ops.reduce((m, op) => Math.max(m, op[3]), 1);
const most = (items, f) => items.reduce((m, item) => Math.max(m, f(item)), 1);
let view = { key: D.violations.length ? D.violations[0].key : 0, from: 0, to: end, shade: null };

const select = document.getElementById('key');
D.keys.forEach((k, i) => {
  const o = document.createElement('option');
  o.value = i;
  o.textContent = k + ' (' + byKey[i].length + ' ops)';
  select.appendChild(o);
});

function drawRates() {
  const svg = document.getElementById('rates');
  const W = 1100, H = 190, L = 60, R = 110, T = 10, B = 30;
  const secs = D.seconds;
  if (!secs.length) return;
  const last = secs[secs.length - 1][0] + 1;
  const x = s => L + (W - L - R) * s / last;
  const maxOps = most(secs, s => s[1]);
  const maxP99 = most(secs, s => s[2]);
  const faults = [];
  for (let i = 1; i < D.faults.length; i++) {
    const [t, a, b] = D.faults[i], [, pa, pb] = D.faults[i - 1];
    faults.push([t, a - pa + b - pb]);
  }
  const maxF = most(faults, f => f[1]);
  faults.forEach(([t, n]) => el('rect', { x: x(t - 1), width: Math.max(1, x(1) - L - 2),
    y: H - B - (H - T - B) * n / maxF, height: (H - T - B) * n / maxF,
    fill: '#8250df', 'fill-opacity': .25, class: 'fault' }, svg));
  D.phases.forEach(([a, b]) => el('rect', { class: 'phase', x: x(a / 1e6), y: T,
    width: Math.max(2, x(b / 1e6) - x(a / 1e6)), height: H - T - B }, svg));
  const line = (i, max, color) => el('polyline', { fill: 'none', stroke: color, 'stroke-width': 2,
    points: secs.map(s => x(s[0] + .5) + ',' + (H - B - (H - T - B) * s[i] / max)).join(' ') }, svg);
  line(1, maxOps, '#1a7f37');
  line(2, maxP99, '#cf222e');
  el('text', { x: 4, y: 14 }, svg).textContent = maxOps + ' ops/s';
  el('text', { x: W - R + 4, y: 14 }, svg).textContent = (maxP99 / 1000).toFixed(1) + ' ms p99';
  el('text', { x: L, y: H - 8 }, svg).textContent =
    'green: operations/s; red: p99 latency; purple bars: faults the steady fault rates injected/s (max ' + maxF + '); ' + last + ' s';
}

function drawTimeline() {
  const svg = document.getElementById('timeline');
  if (!D.keys.length) {
    document.getElementById('notice').textContent = 'No operation was recorded.';
    return;
  }
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  select.value = view.key;
  document.getElementById('from').value = (view.from / 1000).toFixed(3);
  document.getElementById('to').value = (view.to / 1000).toFixed(3);
  const rows = D.clients.length, RH = 22, L = 90, W = 1100, T = 20;
  svg.setAttribute('height', T + rows * RH + 10);
  const span = Math.max(1, view.to - view.from);
  const x = t => L + (W - L - 10) * (t - view.from) / span;
  D.clients.forEach((c, i) => { el('text', { x: 4, y: T + i * RH + 15 }, svg).textContent = c; });
  el('text', { x: L, y: 12 }, svg).textContent = (view.from / 1000).toFixed(3) + ' ms';
  el('text', { x: W - 90, y: 12 }, svg).textContent = (view.to / 1000).toFixed(3) + ' ms';
  D.phases.forEach(([a, b, paused]) => {
    if (b < view.from || a > view.to) return;
    const x0 = x(Math.max(a, view.from)), x1 = x(Math.min(b, view.to));
    el('rect', { class: 'phase', x: x0, y: T - 4, width: Math.max(2, x1 - x0), height: rows * RH + 8 }, svg);
    el('text', { x: x0 + 2, y: T + rows * RH + 8 }, svg).textContent = paused ? 'paused' : 'fault phase';
  });
  if (view.shade) {
    el('rect', { class: 'window', x: x(view.shade[0]), y: T - 4,
      width: Math.max(2, x(view.shade[1]) - x(view.shade[0])), height: rows * RH + 8 }, svg);
  }
  const shown = byKey[view.key].filter(i => D.ops[i][3] >= view.from && D.ops[i][2] <= view.to);
  const notice = document.getElementById('notice');
  notice.textContent = shown.length > D.max_bars
    ? shown.length + ' operations in this window; drawing the first ' + D.max_bars + ': zoom in to see them all.'
    : shown.length + ' operations of ' + D.keys[view.key] + ' in this window.';
  shown.slice(0, D.max_bars).forEach(i => {
    const op = D.ops[i];
    const x0 = x(Math.max(op[2], view.from)), x1 = x(Math.min(op[3], view.to));
    const r = el('rect', { x: x0, y: T + op[0] * RH + 3,
      width: Math.max(1.5, x1 - x0), height: RH - 6, fill: COLORS[op[4]],
      class: inViolation.has(i) ? 'op violation' : 'op' }, svg);
    const lost = op[6] ? ' (an answer was lost to a fault; the replay recovered it)' : '';
    el('title', {}, r).textContent = D.clients[op[0]] + ': ' + KINDS[op[4]] +
      (op[5] ? ' v' + op[5] : '') + lost + ', ' + (op[2] / 1000).toFixed(3) + '..' + (op[3] / 1000).toFixed(3) + ' ms';
    if (op[6]) el('circle', { class: 'fault', cx: x0 + 3, cy: T + op[0] * RH + 3, r: 3.5 }, svg);
  });
}

function showViolation(n, scroll = true) {
  const v = D.violations[n];
  const pad = Math.max(200, (v.to - v.from) * 2);
  view = { key: v.key, from: Math.max(0, v.from - pad), to: v.to + pad, shade: [v.from, v.to] };
  document.getElementById('focus').textContent = 'Violation ' + (n + 1) + ' of ' +
    D.violations.length + ', shaded: key ' + D.keys[v.key] + ': ' + v.reason;
  drawTimeline();
  if (scroll) document.getElementById('controls').scrollIntoView();
}

function zoom(f) {
  const mid = (view.from + view.to) / 2, half = (view.to - view.from) * f / 2;
  view.from = Math.max(0, mid - half); view.to = Math.min(end, mid + half);
  drawTimeline();
}
select.onchange = () => { view.key = +select.value; drawTimeline(); };
document.getElementById('apply').onclick = () => {
  view.from = 1000 * parseFloat(document.getElementById('from').value) || 0;
  view.to = 1000 * parseFloat(document.getElementById('to').value) || end;
  drawTimeline();
};
document.getElementById('zoomin').onclick = () => zoom(0.25);
document.getElementById('zoomout').onclick = () => zoom(4);
document.getElementById('all').onclick = () => { view.from = 0; view.to = end; drawTimeline(); };
drawRates();
if (D.violations.length) showViolation(0, false); else drawTimeline();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Text from the history cannot break out of the page: values are escaped, and the JSON
    /// cannot end its script element.
    #[test]
    fn hostile_values_are_escaped() {
        let ops = vec![Op {
            client: 0,
            key: "</script><b>k".into(),
            call: 1_000,
            ret: 2_000,
            kind: OpKind::Get(Some(("<img src=x onerror=alert(1)>".into(), 1))),
        }];
        let report = RunReport {
            seed: 3,
            duration_secs: 1.0,
            clients: vec![],
            server_requests_dropped: 0,
            server_responses_dropped: 0,
            client_requests_dropped: 0,
            checked_ops: 1,
            checked_keys: 1,
            violations: vec![],
            invariant_violations: vec!["counter \"<k>\": bad".into()],
            schedule: vec![],
            scheduled_faults: 0,
        };
        let page = render(&report, &ops, &[], &[], "run --seed 3 <x>");
        assert!(!page.contains("</script><b>"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("run --seed 3 &lt;x&gt;"));
        assert!(page.contains("counter &quot;&lt;k&gt;&quot;: bad"));
        assert_eq!(page.matches("</script>").count(), 2);
    }
}
