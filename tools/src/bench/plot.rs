//! `--plot PATH.svg`: two charts in one SVG.
//!
//! - Top: the latency percentile spectrum of each system, drawn as HdrHistogram's plotter
//!   draws it: the x axis is `log10(1 / (1 - percentile))`, labelled 0 %, 90 %, 99 %,
//!   99.9 %, ..., so the tail gets as much room as the median; the y axis (latency) is
//!   logarithmic too, so systems orders of magnitude apart fit. Solid: latency from when a
//!   request was due (corrected); dashed (open loop): from its submission (raw). `mergelog
//!   profile` adds the engine's stage histograms.
//! - Bottom: throughput over time of each system, one point per sampling interval, seconds
//!   from the start of that system's run; with `--rounds`, seconds from the start of the
//!   bench, each run a line of its own where it ran (the systems alternate).
//! - With `--consumer`, a third row: the consumer's lag over time of each engine system, in
//!   batches (left) and in age of the oldest unprocessed batch (right), one point per
//!   sampling interval on the same time axis as the throughput, with the lag limit
//!   (`--consumer-lag-max-batches`, `--consumer-lag-max-age`) as a dashed line.

use super::recorder::Interval;
use super::{RunResult, Session};
use crate::error::CliError;
use hdrhistogram::Histogram;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of the spectrum chart.
struct Curve {
    label: String,
    color: RGBColor,
    dashed: bool,
    /// (log10(1 / (1 - q)), latency µs)
    points: Vec<(f64, f64)>,
}

/// The percentile spectrum of `h`: HdrHistogram's iteration, 5 ticks per half distance,
/// up to the highest percentile the count can resolve (1 - 1/count), where the max sits.
fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let x_end = (h.len() as f64).log10().max(1.0);
    let mut points: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .filter_map(|v| {
            let q = v.quantile_iterated_to();
            (q < 1.0).then(|| (-(1.0 - q).log10(), v.value_iterated_to() as f64 / 1000.0))
        })
        .filter(|(x, _)| *x < x_end)
        .collect();
    points.push((x_end, h.max() as f64 / 1000.0));
    points
}

/// `0` -> "0%", `1` -> "90%", `2` -> "99%", `3` -> "99.9%", ...; nothing between.
fn percentile_label(x: &f64) -> String {
    if (x - x.round()).abs() > 1e-6 {
        return String::new();
    }
    match x.round() as i32 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        n => format!("99.{}%", "9".repeat((n - 2) as usize)),
    }
}

fn curves(session: &Session) -> Vec<Curve> {
    let open = session.plan.rate.is_some();
    let mut out = Vec::new();
    let mut color = COLORS.iter().cycle();
    for r in &session.results {
        let c = *color.next().expect("cycle never ends");
        out.push(Curve {
            label: r.system.name().to_owned(),
            color: c,
            dashed: false,
            points: spectrum(&r.latency),
        });
        if open {
            out.push(Curve {
                label: format!("{} (raw)", r.system.name()),
                color: c,
                dashed: true,
                points: spectrum(&r.latency_raw),
            });
        }
    }
    // One system profiled: its stages too.
    if let [only] = &session.results[..] {
        if let Some(stats) = &only.engine {
            for (name, h) in stats.stages.stages() {
                if !h.is_empty() {
                    out.push(Curve {
                        label: format!("{} {name}", only.system.name()),
                        color: *color.next().expect("cycle never ends"),
                        dashed: false,
                        points: spectrum(h),
                    });
                }
            }
        }
    }
    out.retain(|c| !c.points.is_empty());
    out
}

/// One line per run of `r`, (seconds, ops/s) per interval: from the start of the run, or
/// with several rounds (`bench_time`) from the start of the bench.
fn throughput(r: &RunResult, bench_time: bool) -> Vec<Vec<(f64, f64)>> {
    over_time(r, bench_time, |i| {
        Some(i.ops as f64 / i.duration.as_secs_f64().max(1e-9))
    })
}

pub fn write(path: &Path, session: &Session, title: &str) -> Result<(), CliError> {
    draw(path, session, title).map_err(|e| CliError::new(format!("draw {}: {e}", path.display())))
}

fn draw(path: &Path, session: &Session, title: &str) -> DrawResult {
    let consumer = session.plan.consumer.is_some();
    let height = if consumer { 1400 } else { 1000 };
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(600);
    spectrum_chart(&top, &curves(session))?;
    if consumer {
        let (middle, lag) = bottom.split_vertically(400);
        throughput_over_time(&middle, session)?;
        consumer_lag(&lag, session)?;
    } else {
        throughput_over_time(&bottom, session)?;
    }
    root.present()?;
    Ok(())
}

/// `--consumer`: the lag of each engine system's consumer over time, in batches and in age,
/// side by side.
fn consumer_lag(area: &Area<'_>, session: &Session) -> DrawResult {
    let bench_time = session.results.iter().any(|r| r.rounds.len() > 1);
    let limit = session.plan.consumer.and_then(|c| c.lag_max);
    let (left, right) = area.split_horizontally(500);
    let by = |f: fn(&Interval) -> Option<f64>| -> Vec<Series> {
        session
            .results
            .iter()
            .zip(COLORS.iter().cycle())
            .filter(|(r, _)| r.consumer.is_some())
            .map(|(r, c)| (r.system.name().to_owned(), *c, over_time(r, bench_time, f)))
            .collect()
    };
    lag_chart(
        &left,
        LagAxis {
            caption: "consumer lag (batches)",
            unit: "batches",
            limit: limit.and_then(|l| l.batches).map(|b| b as f64),
            bench_time,
        },
        &by(|i| i.consumer_lag.map(|l| l.batches as f64)),
    )?;
    lag_chart(
        &right,
        LagAxis {
            caption: "consumer lag (age of the oldest unprocessed batch)",
            unit: "ms",
            limit: limit.and_then(|l| l.age).map(|a| a.as_secs_f64() * 1e3),
            bench_time,
        },
        &by(|i| i.consumer_lag.map(|l| l.age.as_secs_f64() * 1e3)),
    )
}

/// One line per run of `r`: (seconds, `value` of the interval) at the end of each interval
/// that has one: from the start of the run, or with several rounds (`bench_time`) from the
/// start of the bench.
fn over_time(
    r: &RunResult,
    bench_time: bool,
    value: fn(&Interval) -> Option<f64>,
) -> Vec<Vec<(f64, f64)>> {
    let mut lines: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut round = None;
    for i in &r.timeline {
        let Some(v) = value(i) else { continue };
        if round != Some(i.round) {
            round = Some(i.round);
            lines.push(Vec::new());
        }
        let start = if bench_time {
            r.interval_offset(i)
        } else {
            i.start
        };
        if let Some(line) = lines.last_mut() {
            line.push(((start + i.duration).as_secs_f64(), v));
        }
    }
    lines
}

/// What a lag chart shows besides its lines.
struct LagAxis {
    caption: &'static str,
    unit: &'static str,
    /// The throttling limit, drawn dashed.
    limit: Option<f64>,
    bench_time: bool,
}

/// A lag over time on a linear scale from 0, with the limit (if any) as a dashed line.
fn lag_chart(area: &Area<'_>, axis: LagAxis, series: &[Series]) -> DrawResult {
    let points = || series.iter().flat_map(|s| s.2.iter().flatten());
    let t_max = points().map(|p| p.0).fold(0.1f64, f64::max);
    let y_max = points()
        .map(|p| p.1)
        .chain(axis.limit)
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(axis.caption, ("sans-serif", 16))
        .margin(12)
        .margin_right(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc(if axis.bench_time {
            "seconds into the bench"
        } else {
            "seconds into the run"
        })
        .y_desc(axis.unit)
        .y_labels(8)
        .y_label_formatter(&|y| si(*y))
        .draw()?;
    draw_lines(&mut chart, series, |_| true)?;
    if let Some(limit) = axis.limit {
        let style = BLACK.stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, limit), (t_max, limit)],
                6,
                4,
                style,
            ))?
            .label("limit")
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (7, 0)], style)
                    + PathElement::new(vec![(13, 0), (20, 0)], style)
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The spectrum: every curve on log scales, with a legend.
fn spectrum_chart(area: &Area<'_>, curves: &[Curve]) -> DrawResult {
    let (x_max, y_min, y_max) = spectrum_ranges(curves);
    let mut chart = ChartBuilder::on(area)
        .caption("latency by percentile (log scales)", ("sans-serif", 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&percentile_label)
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    for c in curves {
        let color = c.color;
        let style = color.stroke_width(2);
        if c.dashed {
            chart
                .draw_series(DashedLineSeries::new(c.points.iter().copied(), 6, 4, style))?
                .label(&c.label)
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (7, 0)], style)
                        + PathElement::new(vec![(13, 0), (20, 0)], style)
                });
        } else {
            chart
                .draw_series(LineSeries::new(c.points.iter().copied(), style))?
                .label(&c.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The spectrum's axes: the highest percentile (x, at least 99 %) and the latency range
/// (y, µs) with room on both sides; a default range without points.
fn spectrum_ranges(curves: &[Curve]) -> (f64, f64, f64) {
    let x_max = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(2.0f64, f64::max)
        .ceil();
    let (y_min, y_max) = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (y_min, y_max) = if y_min <= y_max {
        ((y_min / 2.0).max(0.001), y_max * 2.0)
    } else {
        (0.001, 1.0)
    };
    (x_max, y_min, y_max)
}

/// Throughput over time: a linear scale unless the systems are orders of magnitude
/// apart (the naive baseline usually is), then a log scale. Empty intervals are left out
/// of a log scale (the line joins their neighbours).
fn throughput_over_time(area: &Area<'_>, session: &Session) -> DrawResult {
    let bench_time = session.results.iter().any(|r| r.rounds.len() > 1);
    let series: Vec<Series> = session
        .results
        .iter()
        .zip(COLORS.iter().cycle())
        .map(|(r, c)| (r.system.name().to_owned(), *c, throughput(r, bench_time)))
        .collect();
    let points = || series.iter().flat_map(|s| s.2.iter().flatten());
    let t_max = points().map(|p| p.0).fold(0.1f64, f64::max);
    let rates = session
        .results
        .iter()
        .map(RunResult::ops_per_s)
        .filter(|r| *r > 0.0);
    let (lo, hi) = rates.fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    let (r_min, r_max) = points()
        .map(|p| p.1)
        .filter(|r| *r > 0.0)
        .fold((f64::MAX, 1.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    if hi > 20.0 * lo {
        throughput_chart(
            area,
            "throughput over time (log scale)",
            // The baselines sit at the bottom, the engines at the top.
            SeriesLabelPosition::MiddleRight,
            &series,
            bench_time,
            0.0..t_max,
            (r_min.min(r_max) / 2.0..r_max * 2.0).log_scale(),
        )
    } else {
        throughput_chart(
            area,
            "throughput over time",
            SeriesLabelPosition::LowerRight,
            &series,
            bench_time,
            0.0..t_max,
            0.0..r_max * 1.1,
        )
    }
}

/// A system's label, colour and lines (one per run).
type Series = (String, RGBColor, Vec<Vec<(f64, f64)>>);
type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
/// One chart's part of the SVG.
type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn throughput_chart<X, Y>(
    area: &Area<'_>,
    caption: &str,
    legend: SeriesLabelPosition,
    series: &[Series],
    bench_time: bool,
    x: X,
    y: Y,
) -> DrawResult
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(if bench_time {
            "seconds into the bench"
        } else {
            "seconds into the run"
        })
        .y_desc("ops/s")
        .y_labels(8)
        .y_label_formatter(&|y| si(*y))
        .draw()?;
    // Zero throughput cannot go on a log scale.
    draw_lines(&mut chart, series, |p| p.1 > 0.0)?;
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Draws each system's lines (one per run; the points `keep` keeps) with one legend entry
/// per system, not per run.
fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
    keep: impl Fn(&(f64, f64)) -> bool,
) -> DrawResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (label, color, lines) in series {
        let color = *color;
        for (n, points) in lines.iter().enumerate() {
            let kept = points.iter().copied().filter(|p| keep(p));
            let drawn = chart.draw_series(LineSeries::new(kept, color.stroke_width(2)))?;
            if n == 0 {
                drawn
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
        }
    }
    Ok(())
}

/// `1234567.0` -> "1.23M".
fn si(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}G", x / 1e9),
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels() {
        let labels: Vec<String> = [0.0, 1.0, 2.0, 3.0, 5.0]
            .iter()
            .map(percentile_label)
            .collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.999%"]);
        assert_eq!(percentile_label(&2.5), "");
    }

    #[test]
    fn spectrum_ends_at_the_max() {
        let mut h = super::super::latency_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let points = spectrum(&h);
        assert!(points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let last = points.last().unwrap();
        assert_eq!(last.0, 4.0);
        assert!((last.1 - 10_000.0).abs() < 10.0, "{last:?}");
    }
}
