//! The renewal histogram as a PNG (docs/renewal-histogram.png): one panel per lifetime,
//! renewals per 1%-of-half-life bucket over time for each policy, with the steady mean
//! and the 1.5x target drawn across. Text uses DejaVu Sans from the `dejavu` crate
//! (registered with plotters' ab_glyph backend), so no system font is needed.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::renewal::{BUCKETS_PER_HALF_LIFE, Storm};

/// One policy's storm, with the name the legend shows.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// The simulated renewals.
    pub storm: Storm,
    /// SVIDs in the fleet.
    pub n: usize,
    /// Line color (the same policy keeps its color in every panel).
    pub color: RGBColor,
}

/// A panel: the lifetime, the fleet size and the series to draw.
pub type Panel = (Duration, usize, Vec<Series>);

/// Line colors: keycard's scheduler, keycard's agent, SPIRE's rule.
pub const COLORS: [RGBColor; 3] =
    [RGBColor(31, 119, 180), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];

/// Draws `panels` stacked into a PNG at `path`.
pub fn write_png(path: &Path, panels: &[Panel]) -> Result<(), Box<dyn std::error::Error>> {
    register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the bundled DejaVu Sans font did not load")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let height = 420 * panels.len() as u32;
    let root = BitMapBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    (lifetime, n, series): &Panel,
) -> Result<(), Box<dyn std::error::Error>> {
    let bucket_secs = lifetime.as_secs_f64() / 2.0 / f64::from(BUCKETS_PER_HALF_LIFE);
    let histograms: Vec<Vec<usize>> = series.iter().map(|s| s.storm.histogram()).collect();
    let mean = *n as f64 / f64::from(BUCKETS_PER_HALF_LIFE);
    let y_max = histograms.iter().flatten().copied().max().unwrap_or(1) as f64 * 1.08;
    let x_max = histograms.iter().map(Vec::len).max().unwrap_or(1) as f64 * bucket_secs;
    let title = format!(
        "{n} SVIDs issued at once, lifetime {} s: renewals per {:.2} s bucket (1% of half-life)",
        lifetime.as_secs(),
        bucket_secs
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since issuance")
        .y_desc("renewals per bucket")
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (s, counts) in series.iter().zip(&histograms) {
        let color = s.color;
        // A step line: each bucket drawn flat over its width.
        let points = counts.iter().enumerate().flat_map(|(b, &c)| {
            let x0 = b as f64 * bucket_secs;
            [(x0, c as f64), (x0 + bucket_secs, c as f64)]
        });
        let peak = s.storm.peak_over_mean(s.n);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("{} (peak {:.2}x mean)", s.name, peak))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
    }
    for (factor, label) in [(1.0, "steady mean"), (1.5, "1.5x mean (target)")] {
        let y = mean * factor;
        let style = BLACK.mix(if factor > 1.0 { 0.8 } else { 0.4 }).stroke_width(1);
        chart
            .draw_series(LineSeries::new([(0.0, y), (x_max, y)], style))?
            .label(format!("{label}: {y:.0}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}
