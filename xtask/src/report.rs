//! `cargo xtask report <histogram-log>`: reads the daemon's HdrHistogram V2 interval log
//! (`portsyncd --histogram-log`), merges each tag's intervals and writes one SVG with latency by
//! percentile per time tag and the percentile table of every tag; prints the path and the table.
//!
//! Over 400 lines because the log parser, the percentile table and the chart (its percentile
//! axis is a custom plotters coordinate) share the per-tag histograms and units and are used
//! by the demo as one call ([`render_file`]); split it along those three if it grows further.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Tags the daemon records in nanoseconds. Used only for tags the log's `Tags:` header comment
/// does not describe (it predates the `delivery` tag), so older logs still chart correctly.
const DAEMON_NS_TAGS: [&str; 3] = ["latency", "batch_processing", "delivery"];
/// Name given to interval lines without `Tag=` (the format's default histogram).
const UNTAGGED: &str = "(untagged)";
/// Percentiles of the table, as (header, quantile).
const PERCENTILES: [(&str, f64); 5] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999)];
/// Chart size in SVG pixels; the table's height is added below the plot.
const WIDTH: u32 = 1000;
const PLOT_HEIGHT: u32 = 560;
const ROW_HEIGHT: u32 = 24;
/// Points per series: the percentile axis is sampled evenly on its log scale, so the curve is
/// as detailed at 99.99% as at 50%.
const SAMPLES: u32 = 600;
/// Longest percentile axis, in nines (99.9999%); more would only stretch a flat tail.
const MAX_NINES: u32 = 6;
/// Series colours: dark enough to read as thin lines on white (plotters' palettes start with
/// yellows and pale tones).
const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Options of `cargo xtask report`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// HdrHistogram V2 interval log written by `portsyncd --histogram-log`.
    pub log: PathBuf,
    /// The SVG to write; default: the log's path with the extension `.svg`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `cargo xtask report`.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let out = opts.out.clone().unwrap_or_else(|| opts.log.with_extension("svg"));
    let table = render_file(&opts.log, &out)?;
    println!("chart: {}", out.display());
    print!("{}", table.to_text());
    Ok(())
}

/// Reads `log`, writes its chart to `out` and returns the percentile table.
pub fn render_file(log: &Path, out: &Path) -> anyhow::Result<Table> {
    let bytes = fs::read(log).with_context(|| format!("cannot read histogram log {}", log.display()))?;
    let parsed = parse_log(&bytes).with_context(|| format!("histogram log {}", log.display()))?;
    let table = Table::new(&parsed);
    let name = log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let svg = render_svg(&parsed, &table, &name)?;
    fs::write(out, svg).with_context(|| format!("cannot write chart {}", out.display()))?;
    Ok(table)
}

/// How a tag's recorded values are shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    /// A time; recorded values are divided by this to give microseconds.
    Time {
        /// Recorded units per microsecond (1000 for nanoseconds).
        per_us: f64,
    },
    /// A plain count (events or ports per batch), shown as recorded.
    Count,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Unit::Time { .. } => "µs",
            Unit::Count => "count",
        }
    }

    fn display(self, recorded: u64) -> f64 {
        match self {
            Unit::Time { per_us } => recorded as f64 / per_us,
            Unit::Count => recorded as f64,
        }
    }

    /// Digits past what a 3-significant-digit histogram resolves would be noise.
    fn format(self, v: f64) -> String {
        match self {
            Unit::Count => format!("{v:.0}"),
            Unit::Time { .. } if v >= 1000.0 => format!("{v:.0}"),
            Unit::Time { .. } if v >= 10.0 => format!("{v:.1}"),
            Unit::Time { .. } => format!("{v:.2}"),
        }
    }
}

/// All intervals of one tag, merged.
#[derive(Debug)]
pub struct TagHistogram {
    /// The tag (`latency`, `batch_events`, ...).
    pub tag: String,
    /// Unit of the recorded values.
    pub unit: Unit,
    /// Interval lines merged into `histogram`.
    pub intervals: usize,
    /// Every value of every interval, in recorded units.
    pub histogram: Histogram<u64>,
}

/// What an interval log holds, per tag in the order of first appearance.
#[derive(Debug)]
pub struct ParsedLog {
    /// One entry per tag.
    pub tags: Vec<TagHistogram>,
    /// From the earliest interval start to the latest interval end, relative to the log's base.
    pub span: (Duration, Duration),
}

/// Parses an interval log and merges the intervals of each tag. Errors name the 1-based line.
pub fn parse_log(bytes: &[u8]) -> anyhow::Result<ParsedLog> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        bail!("the log is empty: was the daemon started with --histogram-log and did it run?");
    }
    let mut units: BTreeMap<String, Unit> = BTreeMap::new();
    let mut tags: Vec<TagHistogram> = Vec::new();
    let mut span: Option<(Duration, Duration)> = None;
    let mut deserializer = Deserializer::new();
    let mut buf = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.starts_with(b"#") {
            units.extend(header_units(&String::from_utf8_lossy(line)));
            continue;
        }
        if line.starts_with(b"\"StartTimestamp\"") {
            continue;
        }
        // One line at a time, so that an error can name its line; the parser wants the newline.
        buf.clear();
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let interval = match IntervalLogIterator::new(&buf).next() {
            Some(Ok(LogEntry::Interval(i))) => i,
            // Only `#` lines carry StartTime/BaseTime, and those were skipped above.
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => bail!(
                "line {number}: not an interval histogram \
                 (`Tag=<tag>,<start s>,<length s>,<max>,<base64 V2 histogram>`): {}",
                excerpt(line)
            ),
        };
        let tag = interval.tag().map_or(UNTAGGED, |t| t.as_str()).to_owned();
        let encoded = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .with_context(|| format!("line {number}: the {tag} histogram is not base64"))?;
        let h: Histogram<u64> = deserializer
            .deserialize(&mut encoded.as_slice())
            .with_context(|| format!("line {number}: the {tag} histogram is not a V2 HdrHistogram"))?;
        let (start, end) = (interval.start_timestamp(), interval.start_timestamp() + interval.duration());
        span = Some(span.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
        let index = match tags.iter().position(|t| t.tag == tag) {
            Some(i) => i,
            None => {
                // Auto-resizing, so intervals recorded with other bounds still merge.
                let merged = Histogram::new(h.sigfig())
                    .map_err(|e| anyhow!("line {number}: cannot size the merged {tag} histogram: {e:?}"))?;
                tags.push(TagHistogram { tag: tag.clone(), unit: Unit::Count, intervals: 0, histogram: merged });
                tags.len() - 1
            }
        };
        let entry = &mut tags[index];
        entry.histogram.add(&h).map_err(|e| anyhow!("line {number}: cannot merge the {tag} histogram: {e:?}"))?;
        entry.intervals += 1;
    }
    let Some(span) = span else {
        bail!(
            "no interval histograms in the log, only its header: the daemon writes one interval per \
             --histogram-interval-secs and one when it stops"
        );
    };
    for t in &mut tags {
        t.unit = units.get(&t.tag).copied().unwrap_or(if DAEMON_NS_TAGS.contains(&t.tag.as_str()) {
            Unit::Time { per_us: 1_000.0 }
        } else {
            Unit::Count
        });
    }
    if tags.iter().all(|t| t.histogram.is_empty()) {
        bail!("the log's {} tag(s) recorded no values in any interval", tags.len());
    }
    Ok(ParsedLog { tags, span })
}

/// Units from the daemon's header comment
/// `#[Interval 10.000 s. Tags: latency = kernel event to Redis ack (ns), batch_events = ...]`:
/// a description ending in a time unit in parentheses makes a time tag, any other a count.
fn header_units(comment: &str) -> Vec<(String, Unit)> {
    let Some((_, list)) = comment.split_once("Tags:") else {
        return Vec::new();
    };
    let list = list.trim().trim_end_matches(']');
    list.split(", ")
        .filter_map(|item| {
            let (tag, description) = item.split_once('=')?;
            let per_us = match description.trim().rsplit_once('(').map(|(_, u)| u.trim_end_matches(')')) {
                Some("ns") => 1_000.0,
                Some("us" | "µs") => 1.0,
                Some("ms") => 1e-3,
                Some("s") => 1e-6,
                _ => return Some((tag.trim().to_owned(), Unit::Count)),
            };
            Some((tag.trim().to_owned(), Unit::Time { per_us }))
        })
        .collect()
}

fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

/// One tag's row of the percentile table, in display units (µs for times).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The tag.
    pub tag: String,
    /// Unit of the values.
    pub unit: Unit,
    /// Values recorded.
    pub count: u64,
    /// The values at [`PERCENTILES`], in order.
    pub percentiles: [f64; PERCENTILES.len()],
    /// Largest value.
    pub max: f64,
    /// Intervals merged.
    pub intervals: usize,
}

impl Row {
    /// The value at quantile `q` of [`PERCENTILES`] (e.g. 0.99), if the table has it.
    #[cfg(test)]
    fn at(&self, q: f64) -> Option<f64> {
        PERCENTILES.iter().position(|&(_, p)| p == q).map(|i| self.percentiles[i])
    }

    /// Cells in the order of [`Table::HEADER`].
    fn cells(&self) -> Vec<String> {
        let number = |v: f64| if self.count == 0 { "-".to_owned() } else { self.unit.format(v) };
        let mut cells = vec![self.tag.clone(), self.unit.label().to_owned(), self.count.to_string()];
        cells.extend(self.percentiles.iter().map(|&v| number(v)));
        cells.push(number(self.max));
        cells.push(self.intervals.to_string());
        cells
    }
}

/// The percentile table of every tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// One row per tag, in log order.
    pub rows: Vec<Row>,
    /// Seconds from the first interval's start to the last one's end.
    pub span_secs: f64,
}

impl Table {
    const HEADER: [&'static str; 10] =
        ["tag", "unit", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max", "intervals"];

    /// The table of `log`'s merged histograms.
    pub fn new(log: &ParsedLog) -> Self {
        let rows = log
            .tags
            .iter()
            .map(|t| {
                let h = &t.histogram;
                Row {
                    tag: t.tag.clone(),
                    unit: t.unit,
                    count: h.len(),
                    percentiles: PERCENTILES.map(|(_, q)| t.unit.display(h.value_at_quantile(q))),
                    max: if h.is_empty() { 0.0 } else { t.unit.display(h.max()) },
                    intervals: t.intervals,
                }
            })
            .collect();
        Table { rows, span_secs: log.span.1.saturating_sub(log.span.0).as_secs_f64() }
    }

    /// The row of `tag`.
    #[cfg(test)]
    fn row(&self, tag: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.tag == tag)
    }

    /// Aligned plain text, one line per tag after a header line.
    pub fn to_text(&self) -> String {
        let mut lines = vec![Self::HEADER.map(str::to_owned).to_vec()];
        lines.extend(self.rows.iter().map(Row::cells));
        let widths: Vec<usize> =
            (0..Self::HEADER.len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (c, cell) in line.iter().enumerate() {
                let w = widths[c];
                // Writing into a String cannot fail.
                let _ = if c < 2 { write!(text, "{cell:<w$}  ") } else { write!(text, "{cell:>w$}  ") };
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Where quantile `q` sits on the percentile axis: log10(1/(1-q)), so 90% is 1, 99% is 2, 99.9%
/// is 3 ("nines").
fn nines(q: f64) -> f64 {
    -(1.0 - q).log10()
}

/// Axis label of quantile `q`: 0%, 50%, 90%, 99%, 99.9%, ... with as many decimals as nines.
fn percentile_label(q: f64) -> String {
    let decimals = (nines(q).round() as i64 - 2).max(0) as usize;
    format!("{:.decimals$}%", 100.0 * q)
}

/// The percentile axis: values are quantiles, placed by [`nines`] up to `max_nines`, the way
/// HdrHistogram's own plots show a distribution's tail. plotters' linear f64 axis with custom
/// key points offers no label formatter hook, hence this small axis of our own.
#[derive(Debug, Clone, Copy)]
struct PercentileAxis {
    max_nines: u32,
}

impl PercentileAxis {
    fn end(self) -> f64 {
        1.0 - 10f64.powi(-(self.max_nines as i32))
    }
}

impl Ranged for PercentileAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, q: &f64, limit: (i32, i32)) -> i32 {
        // q = 1 (the maximum) is infinitely far right: it is drawn at the axis end.
        let x = if *q >= self.end() { f64::from(self.max_nines) } else { nines(*q) };
        limit.0 + (f64::from(limit.1 - limit.0) * x / f64::from(self.max_nines)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        let tail = (1..=self.max_nines as i32).map(|n| 1.0 - 10f64.powi(-n));
        [0.0, 0.5].into_iter().chain(tail).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.end()
    }
}

/// Latency axis labels are decades: 0.1, 1, 10, 100, 1000.
fn axis_value(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{}", (v * 1e6).round() / 1e6)
    }
}

/// Decade at or below / above `v` (> 0), for the log-scale latency axis.
fn decade_floor(v: f64) -> f64 {
    10f64.powf(v.log10().floor())
}

fn decade_ceil(v: f64) -> f64 {
    10f64.powf(v.log10().ceil())
}

/// One tag's line: (quantile, value in µs) points.
struct Curve<'a> {
    color: RGBColor,
    tag: &'a str,
    points: Vec<(f64, f64)>,
}

/// The chart: latency by percentile for each time tag with values, the table below it.
pub fn render_svg(log: &ParsedLog, table: &Table, name: &str) -> anyhow::Result<String> {
    let plotted: Vec<(usize, &TagHistogram)> = log
        .tags
        .iter()
        .filter(|t| matches!(t.unit, Unit::Time { .. }) && !t.histogram.is_empty())
        .enumerate()
        .collect();
    let most = plotted.iter().map(|(_, t)| t.histogram.len()).max().unwrap_or(1);
    let axis = PercentileAxis { max_nines: (most as f64).log10().ceil().clamp(2.0, f64::from(MAX_NINES)) as u32 };
    let x_max = f64::from(axis.max_nines);
    let series: Vec<Curve> = plotted
        .iter()
        .map(|&(color, t)| {
            let h = &t.histogram;
            let mut points: Vec<(f64, f64)> = (0..=SAMPLES)
                .map(|i| {
                    let q = 1.0 - 10f64.powf(-x_max * f64::from(i) / f64::from(SAMPLES));
                    (q, t.unit.display(h.value_at_quantile(q)))
                })
                .collect();
            // Past MAX_NINES the curve would end below the maximum; end it at the maximum.
            points.push((1.0, t.unit.display(h.max())));
            Curve { color: COLORS[color % COLORS.len()], tag: &t.tag, points }
        })
        .collect();
    let values = || series.iter().flat_map(|c| c.points.iter().map(|&(_, y)| y));
    let y_lo = values().filter(|&y| y > 0.0).fold(f64::INFINITY, f64::min);
    let y_lo = if y_lo.is_finite() { decade_floor(y_lo) } else { 1.0 };
    let y_hi = decade_ceil(values().fold(y_lo, f64::max)).max(y_lo * 10.0);

    let height = PLOT_HEIGHT + ROW_HEIGHT * (table.rows.len() as u32 + 3);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        let draw_err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("cannot draw the chart: {e}");
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot_area, table_area) = root.split_vertically(PLOT_HEIGHT);

        let mut chart = ChartBuilder::on(&plot_area)
            .caption(format!("portsyncd latency by percentile: {name}"), ("sans-serif", 26))
            .margin(16)
            // Room for the last percentile label, centred on the axis end.
            .margin_right(40)
            .x_label_area_size(52)
            .y_label_area_size(80)
            .build_cartesian_2d(axis, (y_lo..y_hi).log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("percentile (log scale of 1/(1-q))")
            .y_desc("latency (µs, log scale)")
            .label_style(("sans-serif", 17))
            .axis_desc_style(("sans-serif", 18))
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| axis_value(*y))
            .draw()
            .map_err(draw_err)?;
        for Curve { color, tag, points } in &series {
            let style = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().map(|&(x, y)| (x, y.max(y_lo))), style))
                .map_err(draw_err)?
                .label(*tag)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        }
        if series.is_empty() {
            chart
                .draw_series(std::iter::once(Text::new(
                    "no time-valued tag recorded any value",
                    (0.1, y_lo * 3.0),
                    ("sans-serif", 18),
                )))
                .map_err(draw_err)?;
        } else {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 18))
                .draw()
                .map_err(draw_err)?;
        }

        // Monospace columns at fixed positions: SVG collapses runs of spaces, so the text
        // table's padding would not survive.
        let columns: [(i32, HPos); 10] = [
            (40, HPos::Left),
            (200, HPos::Left),
            (320, HPos::Right),
            (410, HPos::Right),
            (500, HPos::Right),
            (590, HPos::Right),
            (680, HPos::Right),
            (770, HPos::Right),
            (860, HPos::Right),
            (960, HPos::Right),
        ];
        let row_y = |r: usize| (ROW_HEIGHT as usize * (r + 1)) as i32;
        let cell = |text: &str, (x, h): (i32, HPos), r: usize, bold: bool| {
            let style = TextStyle::from(("monospace", 18).into_font().style(if bold {
                FontStyle::Bold
            } else {
                FontStyle::Normal
            }))
            .pos(Pos::new(h, VPos::Center));
            table_area.draw(&Text::new(text.to_owned(), (x, row_y(r)), style))
        };
        for (c, head) in Table::HEADER.iter().enumerate() {
            cell(head, columns[c], 0, true).map_err(draw_err)?;
        }
        for (r, row) in table.rows.iter().enumerate() {
            for (c, text) in row.cells().iter().enumerate() {
                cell(text, columns[c], r + 1, false).map_err(draw_err)?;
            }
            if let Some(Curve { color, .. }) = series.iter().find(|c| c.tag == row.tag) {
                let y = row_y(r + 1);
                table_area.draw(&PathElement::new(vec![(12, y), (32, y)], color.stroke_width(3))).map_err(draw_err)?;
            }
        }
        let note = format!(
            "All intervals of a tag merged ({:.1} s of log). Times in µs; HdrHistogram keeps 3 significant digits.",
            table.span_secs
        );
        table_area
            .draw(&Text::new(note, (12, row_y(table.rows.len() + 1)), ("sans-serif", 17).into_font().color(&BLACK)))
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2Serializer;
    use plotters::coord::ranged1d::BoldPoints;

    /// `intervals` as a V2 interval log with the daemon's header comment style: each interval is
    /// one second long and holds one line per (tag, values).
    fn log_of(intervals: &[Vec<(&str, Vec<u64>)>]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut serializer = V2Serializer::new();
        let mut header = IntervalLogWriterBuilder::new();
        header.add_comment(
            "[Interval 1.000 s. Tags: latency = kernel event to Redis ack (ns), batch_events = events per batch]",
        );
        let mut w = header.begin_log_with(&mut out, &mut serializer).unwrap();
        for (i, lines) in intervals.iter().enumerate() {
            for (tag, values) in lines {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                for &v in values {
                    h.record(v).unwrap();
                }
                let start = Duration::from_secs(i as u64);
                w.write_histogram(&h, start, Duration::from_secs(1), Tag::new(tag)).unwrap();
            }
        }
        drop(w);
        out
    }

    /// The content of every `<text>` element, trimmed.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let (_, rest) = t.split_once('>')?;
                let (content, _) = rest.split_once("</text>")?;
                Some(content.trim().to_owned())
            })
            .collect()
    }

    fn within_precision(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected / 1000.0
    }

    /// 1..=1000 µs in ns under `latency`, split over two intervals; batch sizes; and `delivery`,
    /// which the header does not describe (the daemon's own logs omit it).
    fn known_log() -> Vec<u8> {
        let us = |r: std::ops::RangeInclusive<u64>| r.map(|v| v * 1_000).collect::<Vec<_>>();
        log_of(&[
            vec![("latency", us(1..=500)), ("batch_events", vec![1, 2, 3]), ("delivery", us(1..=10))],
            vec![("latency", us(501..=1000)), ("batch_events", vec![4096]), ("delivery", us(11..=20))],
        ])
    }

    #[test]
    fn report_of_known_values() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("known.hlog");
        fs::write(&log, known_log()).unwrap();
        let out = dir.path().join("chart.svg");
        let table = render_file(&log, &out).unwrap();

        let latency = table.row("latency").unwrap();
        assert_eq!(latency.unit, Unit::Time { per_us: 1_000.0 });
        assert_eq!((latency.count, latency.intervals), (1000, 2));
        for (got, want) in [
            (latency.at(0.5).unwrap(), 500.0),
            (latency.at(0.9).unwrap(), 900.0),
            (latency.at(0.99).unwrap(), 990.0),
            (latency.at(0.999).unwrap(), 999.0),
            (latency.max, 1000.0),
        ] {
            assert!(within_precision(got, want), "{got} vs {want}: {latency:?}");
        }
        let batch = table.row("batch_events").unwrap();
        assert_eq!((batch.unit, batch.count, batch.intervals), (Unit::Count, 4, 2));
        assert!(within_precision(batch.max, 4096.0), "{batch:?}");
        assert_eq!(batch.at(0.5), Some(2.0));
        let delivery = table.row("delivery").unwrap();
        assert_eq!((delivery.unit, delivery.count), (Unit::Time { per_us: 1_000.0 }, 20));
        assert!(within_precision(delivery.max, 20.0), "{delivery:?}");
        assert_eq!(table.span_secs, 2.0);

        let svg = fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}", &svg[..200.min(svg.len())]);
        let texts = svg_texts(&svg);
        for row in &table.rows {
            for cell in row.cells() {
                assert!(texts.contains(&cell), "cell {cell} of {} missing from the SVG: {texts:?}", row.tag);
            }
        }
        for label in ["0%", "50%", "90%", "99%", "99.9%", "latency", "delivery"] {
            assert!(texts.iter().any(|t| t == label), "{label} missing from the SVG: {texts:?}");
        }
        // The two time tags are curves; the count tag is only in the table.
        let curves = svg
            .split("<polyline")
            .filter(|p| p.split(" points=").nth(1).is_some_and(|pts| pts.matches(',').count() > 100));
        assert_eq!(curves.count(), 2);

        let text = table.to_text();
        assert!(text.starts_with("tag"), "{text}");
        assert!(text.contains("latency") && text.contains("1000"), "{text}");
    }

    #[test]
    fn percentile_axis_labels() {
        let axis = PercentileAxis { max_nines: 5 };
        let labels: Vec<String> = axis.key_points(BoldPoints(10)).into_iter().map(percentile_label).collect();
        assert_eq!(labels, ["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
        assert_eq!(axis.map(&0.0, (0, 500)), 0);
        assert_eq!(axis.map(&0.9, (0, 500)), 100);
        assert_eq!(axis.map(&0.999, (0, 500)), 300);
        assert_eq!(axis.map(&1.0, (0, 500)), 500);
    }

    #[test]
    fn malformed_line_is_named() {
        let mut log = known_log();
        let good_lines = log.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
        log.extend_from_slice(b"Tag=latency,3.000,not-a-number,1.0,HISTFAAAA\n");
        let err = format!("{:#}", parse_log(&log).unwrap_err());
        assert!(err.contains(&format!("line {}:", good_lines + 1)), "{err}");
        assert!(err.contains("not an interval histogram") && err.contains("not-a-number"), "{err}");

        let mut log = known_log();
        log.extend_from_slice(b"Tag=latency,3.000,1.000,1.0,@@@@\n");
        let err = format!("{:#}", parse_log(&log).unwrap_err());
        assert!(err.contains(&format!("line {}:", good_lines + 1)) && err.contains("base64"), "{err}");

        let mut log = known_log();
        log.extend_from_slice(b"Tag=latency,3.000,1.000,1.0,AAAAAAAA\n");
        let err = format!("{:#}", parse_log(&log).unwrap_err());
        assert!(err.contains(&format!("line {}:", good_lines + 1)) && err.contains("V2 HdrHistogram"), "{err}");
    }

    #[test]
    fn empty_logs_are_clear_errors() {
        let err = format!("{:#}", parse_log(b"").unwrap_err());
        assert!(err.contains("empty"), "{err}");
        let header_only = log_of(&[]);
        let err = format!("{:#}", parse_log(&header_only).unwrap_err());
        assert!(err.contains("no interval histograms"), "{err}");
        let no_values = log_of(&[vec![("latency", vec![])]]);
        let err = format!("{:#}", parse_log(&no_values).unwrap_err());
        assert!(err.contains("recorded no values"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.hlog");
        let err = format!("{:#}", render_file(&missing, &dir.path().join("x.svg")).unwrap_err());
        assert!(err.contains("cannot read histogram log") && err.contains("missing.hlog"), "{err}");
    }

    #[test]
    fn header_units_of_the_daemon() {
        let units = header_units(
            "#[Interval 10.000 s. Tags: latency = kernel event to Redis ack (ns), batch_events = events per \
             batch, batch_ports = ports written per batch, batch_processing = batch processing time (ns)]",
        );
        assert_eq!(
            units,
            vec![
                ("latency".to_owned(), Unit::Time { per_us: 1_000.0 }),
                ("batch_events".to_owned(), Unit::Count),
                ("batch_ports".to_owned(), Unit::Count),
                ("batch_processing".to_owned(), Unit::Time { per_us: 1_000.0 }),
            ]
        );
        assert!(header_units("#[Logged with portsyncd 0.1.0]").is_empty());
    }
}
