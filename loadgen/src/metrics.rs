//! Latency histograms: recording, merging, summaries and the `.hgrm` text format.
//!
//! Every histogram counts microseconds with 3 significant digits (a recorded value is
//! within 0.1% of the true one, which is finer than the scheduling noise of any host),
//! from 1 µs up to one hour; larger values saturate at the top rather than being lost.
//! Each load thread owns one [`Histograms`]; they are merged once at the end.

use std::io::{self, Write};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Significant decimal digits kept by every histogram.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Largest value a histogram tells apart: one hour in µs.
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Percentile ticks per half distance in distributions: HdrHistogram's usual 5.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// A new empty microsecond histogram.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
    // sigfig <= 5), so creation cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records a duration given in nanoseconds into a microsecond histogram.
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns / 1_000);
}

/// All the histograms one thread records into.
#[derive(Clone, Debug)]
pub struct Histograms {
    /// Relay latency from the intended send time to arrival (coordinated-omission corrected).
    pub latency: Histogram<u64>,
    /// `latency`, of the deliveries whose sender and receiver are on the same node (every
    /// delivery, with one node).
    pub latency_same_node: Histogram<u64>,
    /// `latency`, of the deliveries whose sender is on another node than the receiver.
    pub latency_cross_node: Histogram<u64>,
    /// Relay latency from the actual send time to arrival.
    pub latency_uncorrected: Histogram<u64>,
    /// Fan-out: latency from the intended send time to the last member's arrival.
    pub last_member: Histogram<u64>,
    /// How late each send left versus its intended time (the generator's own lag).
    pub pacing_lag: Histogram<u64>,
    /// Connection handshake (TCP + WebSocket + protocol hello) from the intended start.
    pub handshake: Histogram<u64>,
    /// Connection handshake from the actual start of the attempt.
    pub handshake_uncorrected: Histogram<u64>,
    /// `matchmake`: a ticket's intended queue time to its match.
    pub time_to_match: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Self::new()
    }
}

impl Histograms {
    /// Empty histograms.
    pub fn new() -> Self {
        Self {
            latency: histogram(),
            latency_same_node: histogram(),
            latency_cross_node: histogram(),
            latency_uncorrected: histogram(),
            last_member: histogram(),
            pacing_lag: histogram(),
            handshake: histogram(),
            handshake_uncorrected: histogram(),
            time_to_match: histogram(),
        }
    }

    /// Adds another thread's histograms into these.
    pub fn merge(&mut self, other: &Histograms) {
        // All histograms share the same bounds, so `add` cannot fail; saturate anyway.
        let pairs = [
            (&mut self.latency, &other.latency),
            (&mut self.latency_same_node, &other.latency_same_node),
            (&mut self.latency_cross_node, &other.latency_cross_node),
            (&mut self.latency_uncorrected, &other.latency_uncorrected),
            (&mut self.last_member, &other.last_member),
            (&mut self.pacing_lag, &other.pacing_lag),
            (&mut self.handshake, &other.handshake),
            (
                &mut self.handshake_uncorrected,
                &other.handshake_uncorrected,
            ),
            (&mut self.time_to_match, &other.time_to_match),
        ];
        for (into, from) in pairs {
            merge_into(into, from);
        }
    }
}

/// Adds `from` into `into`, value by value if the bounds ever differ.
pub fn merge_into(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    if into.add(from).is_err() {
        for v in from.iter_recorded() {
            into.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

/// The usual percentiles of one histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of values recorded.
    pub count: u64,
    /// Smallest value.
    pub min_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// 99.99th percentile.
    pub p9999_us: u64,
    /// Largest value.
    pub max_us: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Standard deviation.
    pub stddev_us: f64,
}

impl LatencySummary {
    /// Summarises `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
            mean_us: h.mean(),
            stddev_us: h.stdev(),
        }
    }
}

/// One row of a percentile distribution (the data of an `.hgrm` file and of the plot).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PercentilePoint {
    /// Percentile, 0 to 100.
    pub percentile: f64,
    /// Value at that percentile, µs.
    pub value_us: u64,
    /// Values recorded up to and including this one.
    pub total_count: u64,
}

/// The percentile distribution of `h`, as HdrHistogram's percentile iterator walks it.
pub fn distribution(h: &Histogram<u64>) -> Vec<PercentilePoint> {
    let mut total = 0u64;
    h.iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|v| {
            total += v.count_since_last_iteration();
            PercentilePoint {
                percentile: v.quantile_iterated_to() * 100.0,
                value_us: v.value_iterated_to(),
                total_count: total,
            }
        })
        .collect()
}

/// Writes `h` in HdrHistogram's percentile-distribution text format (what Java's
/// `outputPercentileDistribution` prints), values in milliseconds, so that the HdrHistogram
/// plotter and other `.hgrm` tools read it.
pub fn write_hgrm(h: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    const US_PER_MS: f64 = 1_000.0;
    let digits = usize::from(SIGNIFICANT_DIGITS);
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for p in distribution(h) {
        let quantile = p.percentile / 100.0;
        let value = p.value_us as f64 / US_PER_MS;
        if quantile < 1.0 {
            writeln!(
                out,
                "{value:>12.digits$} {quantile:>2.12} {:>10} {:>14.2}",
                p.total_count,
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(
                out,
                "{value:>12.digits$} {quantile:>2.12} {:>10}",
                p.total_count
            )?;
        }
    }
    let (mean, stddev) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / US_PER_MS, h.stdev() / US_PER_MS)
    };
    let max = h.max() as f64 / US_PER_MS;
    writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stddev:>12.digits$}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(SIGNIFICANT_DIGITS)
    )
}

/// hdrhistogram's sub-bucket count for a precision: the smallest power of two holding
/// `2 * 10^digits` distinct values.
fn sub_bucket_count(digits: u8) -> u64 {
    (2 * 10u64.pow(u32::from(digits))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = Histograms::new();
        let mut b = Histograms::new();
        let mut all = histogram();
        for v in 1..=1000u64 {
            let h = if v % 3 == 0 { &mut a } else { &mut b };
            h.latency.record(v * 7).unwrap();
            all.record(v * 7).unwrap();
        }
        b.pacing_lag.record(42).unwrap();
        a.merge(&b);
        assert_eq!(a.latency.len(), 1000);
        assert_eq!(LatencySummary::of(&a.latency), LatencySummary::of(&all));
        assert_eq!(a.pacing_lag.len(), 1);
        assert_eq!(a.handshake.len(), 0);
    }

    #[test]
    fn summary_of_known_values() {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 10_000);
        assert_eq!(s.min_us, 1);
        assert!(h.equivalent(s.p50_us, 5_000));
        assert!(h.equivalent(s.p99_us, 9_900));
        assert!(h.equivalent(s.max_us, 10_000));
        assert_eq!(LatencySummary::of(&histogram()), LatencySummary::default());
    }

    #[test]
    fn nanoseconds_become_microseconds_and_huge_values_saturate() {
        let mut h = histogram();
        record_ns(&mut h, 1_500);
        record_ns(&mut h, u64::MAX);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= HIGHEST_US);
    }

    #[test]
    fn hgrm_has_header_rows_and_footer() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // First row: the smallest value (10 µs = 0.010 ms) at percentile 0.
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first, ["0.010", "0.000000000000", "1", "1.00"]);
        // Rows are 4 columns until the last, which has 3 and percentile 1.
        let rows: Vec<&str> = lines[2..]
            .iter()
            .copied()
            .take_while(|l| !l.starts_with('#'))
            .collect();
        let last: Vec<&str> = rows.last().unwrap().split_whitespace().collect();
        assert_eq!(last, ["10.007", "1.000000000000", "1000"]);
        assert!(rows[..rows.len() - 1]
            .iter()
            .all(|r| r.split_whitespace().count() == 4));
        // Footer.
        let footer = &lines[lines.len() - 3..];
        assert!(
            footer[0].starts_with("#[Mean    =        5.00"),
            "{}",
            footer[0]
        );
        assert!(footer[0].contains(", StdDeviation   = "));
        assert_eq!(
            footer[1],
            "#[Max     =       10.007, Total count    =         1000]"
        );
        assert!(footer[2].starts_with("#[Buckets = "));
        assert!(footer[2].ends_with("SubBuckets     =         2048]"));
    }

    #[test]
    fn distribution_counts_up_to_the_total() {
        let mut h = histogram();
        for v in 1..=100u64 {
            h.record(v).unwrap();
        }
        let d = distribution(&h);
        assert_eq!(d.first().unwrap().percentile, 0.0);
        assert_eq!(d.last().unwrap().percentile, 100.0);
        assert_eq!(d.last().unwrap().total_count, 100);
        assert!(d.windows(2).all(|w| w[0].percentile <= w[1].percentile));
    }
}
