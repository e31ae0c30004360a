//! Plots (plotters, PNG and SVG) and sample grids (PNG).
//!
//! Text uses the TrueType font that `scripts/setup.sh` puts at
//! `$ACPO_ASSETS/fonts/DejaVuSans.ttf`, registered with plotters' `ab_glyph` backend, so no
//! system font lookup (fontconfig) happens and the plots render the same everywhere.

use crate::error::{ReportError, Result};
use crate::fsio::with_tmp_file;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Family name under which the TTF is registered.
const FAMILY: &str = "sans-serif";

static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Registers the TTF at `path` for all plot text (once per process).
pub fn register_font(path: &Path) -> Result<()> {
    let r = FONT.get_or_init(|| {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "{}: {e} (the plot font; run `just setup` or set ACPO_ASSETS)",
                path.display()
            )
        })?;
        // plotters keeps fonts for the life of the process and wants `'static` bytes.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, plotters::style::FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a TrueType font plotters can read", path.display()))
    });
    r.clone().map_err(|msg| ReportError::Plot {
        path: path.to_path_buf(),
        msg,
    })
}

/// One line (with point markers) of a panel.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Optional text next to each point (e.g. `λa=0.1`).
    pub labels: Vec<String>,
    /// Optional error bars: half-widths `(x, y)` per point (0 = none on that axis).
    pub err: Vec<(f64, f64)>,
    /// Markers without the connecting line (a point of its own in a scatter).
    pub points_only: bool,
}

/// One panel: a title, axis labels and its series.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

fn colour(i: usize) -> RGBColor {
    const P: [RGBColor; 10] = [
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
    P[i % P.len()]
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in v.filter(|x| x.is_finite()) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.5 * lo.abs().max(1e-3)
    };
    (lo - pad, hi + pad)
}

/// Width of the legend column right of each panel's axes, so no legend covers the data.
const LEGEND_W: u32 = 220;

/// The legend of `p` in its own column: a marker or line in the series' colour, then its name.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
) -> std::result::Result<(), String> {
    let (_, h) = area.dim_in_pixel();
    let n = p.series.len().max(1) as i32;
    let step = ((h as i32 - 40) / n).clamp(9, 16);
    let size = (step - 2).clamp(9, 12);
    for (i, s) in p.series.iter().enumerate() {
        let c = colour(i);
        let y = 34 + i as i32 * step;
        if s.points_only {
            area.draw(&Circle::new((14, y), 4, c.filled()))
        } else {
            area.draw(&PathElement::new(vec![(4, y), (24, y)], c.stroke_width(2)))
        }
        .map_err(|e| e.to_string())?;
        area.draw(&Text::new(
            s.name.clone(),
            (30, y - size / 2),
            (FAMILY, size).into_font().color(&BLACK),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    whole: &DrawingArea<DB, Shift>,
    p: &Panel,
) -> std::result::Result<(), String> {
    let (w, _) = whole.dim_in_pixel();
    let (area, legend) = whole.split_horizontally(w.saturating_sub(LEGEND_W));
    if !p.series.is_empty() {
        draw_legend(&legend, p)?;
    }
    let area = &area;
    // The axes cover the error bars too.
    let ends = || {
        p.series.iter().flat_map(|s| {
            s.points.iter().enumerate().flat_map(move |(i, q)| {
                let (ex, ey) = s.err.get(i).copied().unwrap_or((0.0, 0.0));
                [(q.0 - ex, q.1 - ey), (q.0 + ex, q.1 + ey)]
            })
        })
    };
    let (x0, mut x1) = range(ends().map(|q| q.0));
    // Room right of the last point for its text label.
    if p.series.iter().any(|s| !s.labels.is_empty()) {
        x1 += 0.15 * (x1 - x0);
    }
    let (y0, y1) = range(ends().map(|q| q.1));
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 18))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .label_style((FAMILY, 12))
        .axis_desc_style((FAMILY, 13))
        .x_labels(6)
        .y_labels(6)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in p.series.iter().enumerate() {
        let c = colour(i);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|q| q.0.is_finite() && q.1.is_finite())
            .collect();
        if s.points_only {
            chart
                .draw_series(pts.iter().map(|&q| Circle::new(q, 5, c.filled())))
                .map_err(|e| e.to_string())?;
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        for (q, &(ex, ey)) in s.points.iter().zip(&s.err) {
            if !(q.0.is_finite() && q.1.is_finite()) {
                continue;
            }
            let bars = [
                (ey > 0.0).then(|| vec![(q.0, q.1 - ey), (q.0, q.1 + ey)]),
                (ex > 0.0).then(|| vec![(q.0 - ex, q.1), (q.0 + ex, q.1)]),
            ];
            chart
                .draw_series(
                    bars.into_iter()
                        .flatten()
                        .map(|b| PathElement::new(b, c.stroke_width(1))),
                )
                .map_err(|e| e.to_string())?;
        }
        if !s.points_only && pts.len() <= 60 {
            chart
                .draw_series(pts.iter().map(|&q| Circle::new(q, 3, c.filled())))
                .map_err(|e| e.to_string())?;
        }
        for (q, l) in s.points.iter().zip(&s.labels) {
            if q.0.is_finite() && q.1.is_finite() {
                chart
                    .draw_series(std::iter::once(Text::new(
                        l.clone(),
                        *q,
                        (FAMILY, 11).into_font().color(&c),
                    )))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

fn draw_all<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((panels.len(), 1));
    for (a, p) in areas.iter().zip(panels) {
        draw_panel(a, p)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes `<stem>.png` and `<stem>.svg` with the panels stacked vertically, each with its
/// legend in a column right of the axes.
pub fn plot(stem: &Path, panels: &[Panel]) -> Result<()> {
    let h = 320 * panels.len().max(1) as u32;
    let size = (760 + LEGEND_W, h);
    let png = stem.with_extension("png");
    with_tmp_file(&png, |tmp| {
        draw_all(BitMapBackend::new(tmp, size).into_drawing_area(), panels).map_err(|msg| {
            ReportError::Plot {
                path: png.clone(),
                msg,
            }
        })
    })?;
    let svg = stem.with_extension("svg");
    with_tmp_file(&svg, |tmp| {
        draw_all(SVGBackend::new(tmp, size).into_drawing_area(), panels).map_err(|msg| {
            ReportError::Plot {
                path: svg.clone(),
                msg,
            }
        })
    })
}

/// A PNG grid of the first `n` images (`pixels` u8 HWC RGB), `cols` per row, each upscaled
/// (nearest) to at least 64 pixels so 32x32 samples stay visible.
pub fn write_grid_png(
    pixels: &[u8],
    n: usize,
    h: usize,
    w: usize,
    cols: usize,
    path: &Path,
) -> Result<()> {
    let cols = cols.max(1).min(n.max(1));
    let rows = n.div_ceil(cols).max(1);
    let s = (64 / h.max(1)).max(1);
    let (ch, cw) = (h * s + 2, w * s + 2);
    let mut img = image::RgbImage::from_pixel(
        (cols * cw) as u32,
        (rows * ch) as u32,
        image::Rgb([255, 255, 255]),
    );
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        for y in 0..h * s {
            for x in 0..w * s {
                let o = ((i * h + y / s) * w + x / s) * 3;
                img.put_pixel(
                    (c * cw + 1 + x) as u32,
                    (r * ch + 1 + y) as u32,
                    image::Rgb([pixels[o], pixels[o + 1], pixels[o + 2]]),
                );
            }
        }
    }
    with_tmp_file(path, |tmp| {
        img.save(tmp).map_err(|e| ReportError::Plot {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let px: Vec<u8> = (0..5 * 4 * 4 * 3).map(|i| (i % 251) as u8).collect();
        let p = dir.path().join("g.png");
        write_grid_png(&px, 5, 4, 4, 3, &p).unwrap();
        let img = image::open(&p).unwrap();
        // 16x upscale of 4x4 tiles plus a 1-pixel border each side.
        assert_eq!((img.width(), img.height()), (3 * 66, 2 * 66));
    }
}
