//! Small, dependency-free SVG charts for the HTML report: a line chart and a bar chart.
//!
//! Written here rather than with a plotting crate because the report must open offline anywhere and the
//! plotting crates lay out text with system fonts, which a fresh server may not have; an SVG with `<text>`
//! leaves text to the browser.

use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// Escapes text for XML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// CSS color.
    pub color: &'static str,
    /// Points `(x, y)`; x is typically seconds since the epoch.
    pub points: Vec<(f64, f64)>,
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi <= lo {
        return (lo - 1.0, hi + 1.0);
    }
    (lo, hi)
}

fn frame(out: &mut String, title: &str, y_lo: f64, y_hi: f64) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><text x="{LEFT}" y="18" font-size="14" font-weight="bold">{t}</text>"#,
        t = escape(title)
    );
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = write!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#ccc"/>"##,
        x1 - x0,
        y1 - y0
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let y = y1 - f * (y1 - y0);
        let v = y_lo + f * (y_hi - y_lo);
        let _ = write!(
            out,
            r##"<line x1="{x0}" x2="{x1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            short(v)
        );
    }
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A line chart; `x_label` formats an x value for the axis.
pub fn line_chart(title: &str, series: &[Series], x_label: impl Fn(f64) -> String) -> String {
    let (x_lo, x_hi) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y_lo, y_hi) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain([0.0]));
    let mut out = String::new();
    frame(&mut out, title, y_lo, y_hi);
    let sx = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * (W - LEFT - RIGHT);
    let sy = |y: f64| (H - BOTTOM) - (y - y_lo) / (y_hi - y_lo) * (H - BOTTOM - TOP);
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let d: Vec<String> = s.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ =
            write!(out, r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#, s.color, d.join(" "));
        for &(x, y) in &s.points {
            let _ = write!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#, sx(x), sy(y), s.color);
        }
        let lx = LEFT + 10.0 + 170.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{c}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
            H - 14.0,
            lx + 14.0,
            H - 5.0,
            escape(&s.name),
            c = s.color
        );
    }
    for (x, anchor) in [(x_lo, "start"), (x_hi, "end")] {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="{anchor}">{}</text>"#,
            sx(x),
            H - BOTTOM + 14.0,
            escape(&x_label(x))
        );
    }
    out.push_str("</svg>");
    out
}

/// A bar chart of labelled values.
pub fn bar_chart(title: &str, bars: &[(String, f64)], color: &str) -> String {
    let (_, y_hi) = bounds(bars.iter().map(|b| b.1).chain([0.0]));
    let mut out = String::new();
    frame(&mut out, title, 0.0, y_hi);
    let n = bars.len().max(1) as f64;
    let slot = (W - LEFT - RIGHT) / n;
    for (i, (label, v)) in bars.iter().enumerate() {
        let h = v / y_hi * (H - BOTTOM - TOP);
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let _ = write!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{}: {v}</title></rect><text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            H - BOTTOM - h,
            slot * 0.7,
            escape(label),
            x + slot * 0.35,
            H - BOTTOM + 14.0,
            escape(label)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_their_data_and_escape_text() {
        let s = Series { name: "a<b".into(), color: "#36c", points: vec![(0.0, 1.0), (10.0, 3.0), (20.0, 2.0)] };
        let svg = line_chart("drift & more", &[s], |x| format!("t={x}"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("drift &amp; more") && svg.contains("a&lt;b"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("t=0") && svg.contains("t=20"));
        let bars = bar_chart("hist", &[("0s".into(), 5.0), ("≤ 1s".into(), 0.0), ("> 1s".into(), 2.0)], "#c63");
        assert_eq!(bars.matches("<rect").count(), 1 + 3, "frame + one per bar");
        assert!(bars.contains(r#"height="0.0""#), "an empty bucket has zero height");
    }
}
