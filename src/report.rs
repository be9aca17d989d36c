//! The memory report: one self-contained HTML page (no external assets, no
//! network) that shows where a step's memory goes.
//!
//! - a timeline of allocated bytes stacked by tag over one recorded step
//!   (x = allocator clock, y = bytes), reserved as a dashed line, the budget
//!   as a red line, the peak marked with the op that reached it;
//! - a table by tag: bytes held at the step's peak and each tag's own peak;
//! - the configuration.
//!
//! Every tag's area is an SVG `<path id="series-TAG" class="series">`; a
//! tiny inline script measures each one after layout (`getBBox`) and writes
//! the sizes into `<pre id="render-check">`, so a headless browser's DOM dump
//! shows whether the figure rendered. Long steps are downsampled to at most
//! [`MAX_POINTS`] points: per bucket of events the highest and the lowest
//! total, so the peak is drawn exactly.

use crate::alloc::{fmt_bytes, Recording, Tag, TraceKind};
use crate::plan::PlanReport;
use crate::train::TrainReport;
use std::collections::HashMap;
use std::fmt::Write;

/// Most points the timeline keeps.
pub const MAX_POINTS: usize = 2000;

/// What a page shows.
pub struct Page<'a> {
    pub title: String,
    /// (name, value) rows of the configuration summary.
    pub config: Vec<(String, String)>,
    pub step: &'a Recording,
    pub budget: Option<usize>,
}

/// The state after one event of the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub clock: u64,
    /// Allocated bytes per tag, indexed like [`Tag::ALL`].
    pub by_tag: [usize; 7],
    pub reserved: usize,
}

impl Point {
    pub fn total(&self) -> usize {
        self.by_tag.iter().sum()
    }
}

/// The step as a timeline: the state it began from, then one point per
/// event; and the index of the peak (first maximum of allocated) with the op
/// whose allocation reached it.
pub fn timeline(step: &Recording) -> (Vec<Point>, usize, &'static str) {
    let mut tags: HashMap<(&str, usize), Tag> = step.start_blocks.iter().map(|b| ((b.pool, b.offset), b.tag)).collect();
    let mut cur =
        Point { clock: step.start_clock.saturating_sub(1), by_tag: step.start_by_tag, reserved: step.start_reserved };
    let mut points = vec![cur];
    let (mut peak, mut peak_op) = (0, "");
    for e in &step.events {
        let key = (e.pool, e.offset);
        match (e.kind, e.tag) {
            (TraceKind::Alloc, Some(t)) => {
                tags.insert(key, t);
                cur.by_tag[t as usize] += e.bytes;
            }
            (TraceKind::Free, _) => {
                if let Some(t) = tags.remove(&key).or(e.tag) {
                    cur.by_tag[t as usize] = cur.by_tag[t as usize].saturating_sub(e.bytes);
                }
            }
            (TraceKind::Retag, Some(t)) => {
                if let Some(old) = tags.insert(key, t) {
                    cur.by_tag[old as usize] = cur.by_tag[old as usize].saturating_sub(e.bytes);
                    cur.by_tag[t as usize] += e.bytes;
                }
            }
            (TraceKind::Grow, _) => cur.reserved += e.bytes,
            (TraceKind::Shrink, _) => cur.reserved = cur.reserved.saturating_sub(e.bytes),
            _ => {}
        }
        cur.clock = e.clock;
        if e.kind == TraceKind::Alloc && cur.total() > points[peak].total() {
            peak = points.len();
            peak_op = e.label;
        }
        points.push(cur);
    }
    (points, peak, peak_op)
}

/// At most `max` points: the first, the last, and per bucket the highest and
/// the lowest total (in order), so every maximum — the peak — survives.
pub fn downsample(points: &[Point], max: usize) -> Vec<Point> {
    if points.len() <= max {
        return points.to_vec();
    }
    let bucket = points.len().div_ceil(max.saturating_sub(2).max(2) / 2);
    let mut keep = vec![0, points.len() - 1];
    for start in (0..points.len()).step_by(bucket) {
        let chunk = &points[start..(start + bucket).min(points.len())];
        let hi = (0..chunk.len()).max_by_key(|&i| (chunk[i].total(), std::cmp::Reverse(i))).unwrap_or(0);
        let lo = (0..chunk.len()).min_by_key(|&i| chunk[i].total()).unwrap_or(0);
        keep.extend([start + hi, start + lo]);
    }
    keep.sort_unstable();
    keep.dedup();
    keep.into_iter().map(|i| points[i]).collect()
}

// Colours per tag (Tag::ALL order), readable on white.
const COLOURS: [&str; 7] = ["#4e79a7", "#f28e2b", "#76b7b2", "#e15759", "#edc948", "#b07aa1", "#59a14f"];
// Bottom to top: what lives across steps first, then what a step builds up.
const STACK: [Tag; 7] =
    [Tag::Parameter, Tag::OptimizerState, Tag::Gradient, Tag::Data, Tag::Activation, Tag::Temporary, Tag::Workspace];
const W: f64 = 960.0;
const H: f64 = 360.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;

// A round tick step near `raw` bytes: 1, 2, 2.5 or 5 times a power of ten of KiB, MiB, GiB.
fn nice_step(raw: f64) -> f64 {
    let unit =
        [1.0, 1024.0, 1048576.0, 1073741824.0, 1099511627776.0].into_iter().rev().find(|&u| raw >= u).unwrap_or(1.0);
    let m = raw / unit;
    let pow = 10f64.powf(m.log10().floor());
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().find(|&k| k * pow >= m).unwrap_or(10.0);
    nice * pow * unit
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page, as one self-contained HTML document.
pub fn html(page: &Page) -> String {
    let (all, peak_at, peak_op) = timeline(page.step);
    let peak = all[peak_at];
    let points = downsample(&all, MAX_POINTS);
    let top_bytes = all.iter().map(|p| p.total().max(p.reserved)).max().unwrap_or(0).max(page.budget.unwrap_or(0));
    let ymax = (top_bytes as f64 * 1.05).max(1.0);
    let (c0, c1) = (points[0].clock as f64, points[points.len() - 1].clock.max(points[0].clock + 1) as f64);
    let x = |c: u64| LEFT + (c as f64 - c0) / (c1 - c0) * (W - LEFT - RIGHT);
    let y = |b: f64| TOP + (1.0 - b / ymax) * (H - TOP - BOTTOM);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="allocated bytes by tag over one step">"#
    );
    // Axes and byte ticks at round sizes.
    let tick = nice_step(ymax / 4.0);
    for k in 0..=(ymax / tick) as usize {
        let b = tick * k as f64;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y(b) + 4.0,
            fmt_bytes(b as usize),
            yy = y(b)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12">allocator clock (events {}–{})</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 8.0,
        points[0].clock,
        points[points.len() - 1].clock
    );
    // One stacked area per tag that holds bytes at some point of the step.
    let mut below = vec![0usize; points.len()];
    for tag in STACK {
        let ti = tag as usize;
        if all.iter().all(|p| p.by_tag[ti] == 0) {
            continue;
        }
        let mut d = String::new();
        for (i, p) in points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { "L" },
                x(p.clock),
                y((below[i] + p.by_tag[ti]) as f64)
            );
        }
        for (i, p) in points.iter().enumerate().rev() {
            let _ = write!(d, "L{:.1},{:.1}", x(p.clock), y(below[i] as f64));
        }
        let _ = write!(
            svg,
            r#"<path id="series-{n}" class="series" data-tag="{n}" d="{d}Z" fill="{c}" fill-opacity="0.85" stroke="{c}" stroke-width="0.5"><title>{n}</title></path>"#,
            n = tag.name(),
            c = COLOURS[ti]
        );
        for (i, p) in points.iter().enumerate() {
            below[i] += p.by_tag[ti];
        }
    }
    // Reserved, dashed.
    let mut d = String::new();
    for (i, p) in points.iter().enumerate() {
        let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, x(p.clock), y(p.reserved as f64));
    }
    let _ = write!(svg, r##"<path id="reserved-line" d="{d}" fill="none" stroke="#333" stroke-dasharray="5,3"/>"##);
    if let Some(b) = page.budget {
        let _ = write!(
            svg,
            r##"<line id="budget-line" x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#d62728" stroke-width="2"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12" fill="#d62728">budget {}</text>"##,
            W - RIGHT,
            W - RIGHT,
            y(b as f64) - 5.0,
            fmt_bytes(b),
            yy = y(b as f64)
        );
    }
    let (px, py) = (x(peak.clock), y(peak.total() as f64));
    let anchor = if px > W / 2.0 { "end" } else { "start" };
    let dx = if px > W / 2.0 { -8.0 } else { 8.0 };
    let _ = write!(
        svg,
        r##"<g id="peak-marker"><line x1="{px:.1}" x2="{px:.1}" y1="{py:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="2,2"/><circle cx="{px:.1}" cy="{py:.1}" r="4" fill="#000"/><text x="{:.1}" y="{:.1}" text-anchor="{anchor}" font-size="12">peak {} in <tspan id="peak-label" font-weight="bold">{}</tspan></text></g>"##,
        H - BOTTOM,
        px + dx,
        py - 6.0,
        fmt_bytes(peak.total()),
        escape(peak_op)
    );
    svg += "</svg>";

    // The legend and the table by tag.
    let mut own_peak = [0usize; 7];
    for p in &all {
        for (t, v) in own_peak.iter_mut().enumerate() {
            *v = (*v).max(p.by_tag[t]);
        }
    }
    let mut rows = String::new();
    for tag in STACK.iter().rev() {
        let ti = *tag as usize;
        if own_peak[ti] == 0 {
            continue;
        }
        let _ = write!(
            rows,
            r#"<tr id="row-{n}"><td><span class="swatch" style="background:{c}"></span>{n}</td><td>{}</td><td>{}</td><td>{:.1} %</td></tr>"#,
            fmt_bytes(peak.by_tag[ti]),
            fmt_bytes(own_peak[ti]),
            100.0 * peak.by_tag[ti] as f64 / peak.total().max(1) as f64,
            n = tag.name(),
            c = COLOURS[ti]
        );
    }
    let _ = write!(
        rows,
        r#"<tr class="total"><td>total</td><td>{}</td><td></td><td>100 %</td></tr>"#,
        fmt_bytes(peak.total())
    );
    let mut config = String::new();
    for (k, v) in &page.config {
        let _ = write!(config, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    let title = escape(&page.title);
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
td, th {{ padding: 3px 10px; text-align: right; border-bottom: 1px solid #eee; }}
td:first-child, th {{ text-align: left; }}
.swatch {{ display: inline-block; width: 10px; height: 10px; margin-right: 6px; }}
.total td {{ font-weight: bold; }}
#render-check {{ display: none; }}
</style></head><body>
<h1>{title}</h1>
<p>Allocated bytes of one step, stacked by tag; dashed: reserved. The peak: <b>{peak_bytes}</b> in <code>{op}</code>.</p>
{svg}
<h2>By tag</h2>
<table id="by-tag"><tr><th>tag</th><th>at the peak</th><th>own peak</th><th>share at the peak</th></tr>{rows}</table>
<h2>Configuration</h2>
<table id="config">{config}</table>
<pre id="render-check"></pre>
<script>
(function () {{
  var out = {{ series: {{}}, budget: null, peak: null, peak_label: null }};
  var box = function (e) {{ var b = e.getBBox(); return {{ x: b.x, y: b.y, width: b.width, height: b.height }}; }};
  document.querySelectorAll('.series').forEach(function (e) {{ out.series[e.getAttribute('data-tag')] = box(e); }});
  var b = document.getElementById('budget-line'); if (b) out.budget = box(b);
  var p = document.getElementById('peak-marker'); if (p) out.peak = box(p);
  var l = document.getElementById('peak-label'); if (l) out.peak_label = l.textContent;
  document.getElementById('render-check').textContent = JSON.stringify(out);
}})();
</script>
</body></html>
"#,
        peak_bytes = fmt_bytes(peak.total()),
        op = escape(peak_op),
    )
}

/// The report of a plan: its recorded steady-state step (`p.step`) and configuration.
pub fn for_plan(p: &PlanReport, step: &Recording) -> String {
    let mut config = vec![
        ("predicted peak allocated".to_string(), fmt_bytes(p.predicted_peak_allocated_bytes)),
        ("predicted peak reserved".to_string(), fmt_bytes(p.predicted_peak_reserved_bytes)),
        ("peak op (whole plan)".to_string(), p.peak_op.to_string()),
    ];
    config.extend(common(p.parameters, p.micro_batch, p.accumulation, p.precision.dtype().name(), p.recomputed_blocks));
    config.push(("budget".to_string(), p.budget_bytes.map_or("none".to_string(), fmt_bytes)));
    if let Some(f) = &p.static_plan {
        config.push(("reserved ÷ peak live".to_string(), ratios(f)));
    }
    html(&Page { title: "headroom plan: memory of one step".to_string(), config, step, budget: p.budget_bytes })
}

/// The report of a training run: one recorded steady-state step of it.
pub fn for_train(r: &TrainReport, step: &Recording) -> String {
    let mut config = vec![
        ("measured peak allocated".to_string(), fmt_bytes(r.peak_allocated_bytes)),
        ("measured peak reserved".to_string(), fmt_bytes(r.peak_reserved_bytes)),
        ("peak op (whole run)".to_string(), r.peak_op.to_string()),
        ("steps".to_string(), r.steps.to_string()),
        ("loss".to_string(), format!("{:.4} → {:.4}", r.loss_first, r.loss_last)),
    ];
    config.extend(common(r.parameters, r.micro_batch, r.accumulation, r.precision.dtype().name(), r.recomputed_blocks));
    config.push(("budget".to_string(), r.budget_bytes.map_or("none".to_string(), fmt_bytes)));
    if let Some(f) = &r.static_plan {
        config.push(("reserved ÷ peak live".to_string(), ratios(f)));
    }
    html(&Page { title: "headroom train: memory of one step".to_string(), config, step, budget: r.budget_bytes })
}

fn common(params: usize, micro: usize, accum: usize, dtype: &str, recomputed: usize) -> Vec<(String, String)> {
    vec![
        ("parameters".to_string(), params.to_string()),
        ("micro-batch × accumulation".to_string(), format!("{micro} × {accum}")),
        ("precision".to_string(), dtype.to_string()),
        ("recomputed blocks".to_string(), recomputed.to_string()),
    ]
}

fn ratios(f: &crate::alloc::StaticFigures) -> String {
    format!("caching allocator {:.3}, static plan {:.3}", f.caching_ratio, f.static_ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(clock: u64, total: usize) -> Point {
        Point { clock, by_tag: [total, 0, 0, 0, 0, 0, 0], reserved: 0 }
    }

    #[test]
    fn downsampling_keeps_the_peak_and_the_ends() {
        let points: Vec<Point> = (0..10_000).map(|i| point(i, (i * 7919 % 10_007) as usize)).collect();
        let kept = downsample(&points, MAX_POINTS);
        assert!(kept.len() <= MAX_POINTS, "{}", kept.len());
        let max = points.iter().map(|p| p.total()).max().unwrap();
        assert_eq!(kept.iter().map(|p| p.total()).max().unwrap(), max);
        assert_eq!((kept[0], kept[kept.len() - 1]), (points[0], points[9_999]));
        assert!(kept.windows(2).all(|w| w[0].clock < w[1].clock));
    }
}
