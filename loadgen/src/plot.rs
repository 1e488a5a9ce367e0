//! Latency-by-percentile plots as hand-written SVG, in the style of HdrHistogram's plotter.
//!
//! The x axis is `1/(1-p)` on a log scale, so that 90%, 99%, 99.9%... are evenly spaced
//! and the tail gets as much room as the median; the y axis is latency on a log scale.
//! Several runs overlay in one plot, one colour each.

use std::fmt::Write as _;

use crate::metrics::PercentilePoint;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of the plot.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// The run's percentile distribution.
    pub points: Vec<PercentilePoint>,
}

/// x coordinate data: log10(1/(1-p)), p in 0..1; the 100% point sits one decade past
/// the last finite one (HdrHistogram plots do the same: the max is drawn at the end).
fn series_xy(points: &[PercentilePoint]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut last_x = 0.0f64;
    for p in points {
        let q = p.percentile / 100.0;
        let x = if q < 1.0 {
            (1.0 / (1.0 - q)).log10()
        } else {
            last_x.ceil().max(last_x + 0.5)
        };
        last_x = last_x.max(x);
        // log10 of latency; sub-microsecond values sit on the 1 µs line.
        out.push((x, (p.value_us.max(1) as f64).log10()));
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn percentile_label(decade: u32) -> String {
    // 1/(1-p) = 10^decade -> p = 1 - 10^-decade
    match decade {
        0 => "0%".into(),
        d => {
            let p = 100.0 - 100.0 / 10f64.powi(d as i32);
            let decimals = d.saturating_sub(2) as usize;
            format!("{p:.decimals$}%")
        }
    }
}

/// A compact latency label for grid lines (1µs, 20µs, 5ms, 1s...).
fn axis_label(us: f64) -> String {
    let us = us.round();
    if us < 1_000.0 {
        format!("{us}µs")
    } else if us < 1_000_000.0 {
        format!("{}ms", us / 1e3)
    } else {
        format!("{}s", us / 1e6)
    }
}

/// Renders the series as an SVG document.
pub fn render(title: &str, series: &[Series]) -> String {
    let all: Vec<Vec<(f64, f64)>> = series.iter().map(|s| series_xy(&s.points)).collect();
    let max_x = all
        .iter()
        .flatten()
        .map(|p| p.0)
        .fold(1.0f64, f64::max)
        .ceil()
        .max(2.0);
    let (mut min_y, mut max_y) = all
        .iter()
        .flatten()
        .fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    if min_y > max_y {
        (min_y, max_y) = (0.0, 3.0);
    }
    let min_y = min_y.floor();
    let max_y = max_y.ceil().max(min_y + 1.0);

    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / max_x * plot_w;
    let sy = |y: f64| TOP + plot_h - (y - min_y) / (max_y - min_y) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Grid: decades of 1/(1-p) on x; decades (and 2x, 5x) of latency on y.
    for d in 0..=max_x as u32 {
        let x = sx(f64::from(d));
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            percentile_label(d)
        );
    }
    let mut decade = min_y;
    while decade <= max_y {
        for (m, major) in [(1.0f64, true), (2.0, false), (5.0, false)] {
            let y_val = decade + m.log10();
            if y_val > max_y + 1e-9 {
                continue;
            }
            let y = sy(y_val);
            let colour = if major { "#ccc" } else { "#eee" };
            let _ = writeln!(
                svg,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}"/>"#,
                LEFT + plot_w
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                axis_label(10f64.powf(y_val))
            );
        }
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1/(1-p))</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 20.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">latency (log scale)</text>"#,
        TOP + plot_h / 2.0
    );

    for (i, (s, xy)) in series.iter().zip(&all).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if !xy.is_empty() {
            let mut points = String::new();
            for &(x, y) in xy {
                let _ = write!(points, "{:.1},{:.1} ", sx(x), sy(y));
            }
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.trim_end()
            );
        }
        let ly = TOP + 16.0 + 18.0 * i as f64;
        let lx = LEFT + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/>"#,
            ly - 4.0,
            lx + 24.0,
            ly - 4.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{ly:.1}">{}</text>"#,
            lx + 30.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{distribution, histogram};

    #[test]
    fn renders_a_line_per_run_and_a_legend() {
        let mut a = histogram();
        let mut b = histogram();
        for v in 1..=10_000u64 {
            a.record(v).unwrap();
            b.record(v * 3).unwrap();
        }
        let series = [
            Series {
                label: "run <a>".into(),
                points: distribution(&a),
            },
            Series {
                label: "run b".into(),
                points: distribution(&b),
            },
        ];
        let svg = render("relay", &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("run &lt;a&gt;"));
        assert!(svg.contains(">99.9%<"));
        assert!(svg.contains(">1ms<") && svg.contains(">20µs<"));
        // every coordinate is a finite number
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_runs_still_render() {
        let svg = render(
            "nothing",
            &[Series {
                label: "empty".into(),
                points: vec![],
            }],
        );
        assert!(svg.contains("empty"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(3), "99.9%");
        assert_eq!(percentile_label(5), "99.999%");
    }
}
