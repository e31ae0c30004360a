//! `acpo plots`: every plots file the pipeline declares, on one self-contained HTML page (as
//! `dvc plots show` does). A data file (CSV, TSV, or JSON as a list of rows) becomes one small
//! line chart per numeric column against the x column (`step`, `epoch`, `iteration`, `x`
//! or `i` when there is one, else the first), each with its own scale; an image
//! (PNG, JPEG, GIF, SVG) is shown as it is, linked relatively. The charts are inline SVG
//! written here: the engine has no plotting dependency, and a polyline needs none.

use crate::error::{Error, Result};
use crate::workspace::Workspace;
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

/// Column names taken as the x axis when present, in this order.
const X_NAMES: [&str; 5] = ["step", "epoch", "iteration", "x", "i"];

/// One data series read from a plots file: the x column's name and values, and each other
/// numeric column.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub x_name: String,
    pub x: Vec<f64>,
    pub columns: Vec<(String, Vec<f64>)>,
}

/// Reads a CSV/TSV (header row) or JSON (a list of objects) plots file; columns whose
/// values are not all numbers are left out.
pub fn read_series(path: &Path) -> Result<Series> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let rows: Vec<Vec<(String, String)>> = match ext {
        "csv" | "tsv" => {
            let sep = if ext == "csv" { ',' } else { '\t' };
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            let header: Vec<String> = lines
                .next()
                .unwrap_or("")
                .split(sep)
                .map(|h| h.trim().to_string())
                .collect();
            lines
                .map(|l| {
                    header
                        .iter()
                        .cloned()
                        .zip(l.split(sep).map(|c| c.trim().to_string()))
                        .collect()
                })
                .collect()
        }
        "json" => {
            let v: Value = serde_json::from_str(&text).map_err(|e| Error::Corrupt {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            let Value::Array(items) = v else {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    message: "a JSON plots file must be a list of rows (objects)".into(),
                });
            };
            items
                .iter()
                .filter_map(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.to_string().trim_matches('"').to_string()))
                        .collect()
                })
                .collect()
        }
        _ => {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                message: "plots data must be .csv, .tsv or .json".into(),
            })
        }
    };
    let names: Vec<String> = rows
        .first()
        .map(|r| r.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let column = |name: &str| -> Option<Vec<f64>> {
        rows.iter()
            .map(|r| {
                r.iter()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| v.parse::<f64>().ok())
            })
            .collect()
    };
    // The x column: a step-like name when there is one (JSON objects may come with their
    // keys sorted), else the first column.
    let x_name = X_NAMES
        .iter()
        .find(|x| names.iter().any(|n| n == *x))
        .map(|x| x.to_string())
        .or_else(|| names.first().cloned())
        .unwrap_or_default();
    let x = column(&x_name).unwrap_or_else(|| (0..rows.len()).map(|i| i as f64).collect());
    let columns = names
        .iter()
        .filter(|n| **n != x_name)
        .filter_map(|n| column(n).map(|v| (n.clone(), v)))
        .collect();
    Ok(Series { x_name, x, columns })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A 6-significant-digit label.
fn label(v: f64) -> String {
    let s = format!("{v:.4e}");
    match s.parse::<f64>() {
        Ok(x) if x.abs() >= 1e-3 && x.abs() < 1e5 || x == 0.0 => {
            let t = format!("{x:.4}");
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        _ => s,
    }
}

/// One line chart as SVG: `y` against `x`, axes with their ranges.
pub fn svg_chart(title: &str, x_name: &str, x: &[f64], y: &[f64]) -> String {
    let (w, h, left, bottom, top, right) = (320.0, 180.0, 56.0, 30.0, 22.0, 10.0);
    let finite = |v: &[f64]| -> (f64, f64) {
        let it = v.iter().copied().filter(|a| a.is_finite());
        let lo = it.clone().fold(f64::INFINITY, f64::min);
        let hi = it.fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, hi + 0.5)
        }
    };
    let ((x0, x1), (y0, y1)) = (finite(x), finite(y));
    let px = |v: f64| left + (v - x0) / (x1 - x0) * (w - left - right);
    let py = |v: f64| top + (1.0 - (v - y0) / (y1 - y0)) * (h - top - bottom);
    let points: Vec<String> = x
        .iter()
        .zip(y)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(&a, &b)| format!("{:.1},{:.1}", px(a), py(b)))
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="10"><text x="{left}" y="14" font-size="11">{}</text><rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/><polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">{}</text><text x="{left}" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text></svg>"##,
        esc(title),
        w - left - right,
        h - top - bottom,
        points.join(" "),
        left - 4.0,
        top + 8.0,
        label(y1),
        left - 4.0,
        h - bottom,
        label(y0),
        h - bottom + 12.0,
        label(x0),
        w - right,
        h - bottom + 12.0,
        label(x1),
        (w + left) / 2.0,
        h - 4.0,
        esc(x_name),
    );
    s
}

/// The page: for every declared plots file that exists (those under `targets` when given),
/// its charts or its image. `out_dir` is where the page will be written, for relative links.
pub fn plots_html(ws: &Workspace, targets: &[String], out_dir: &Path) -> Result<(String, usize)> {
    let wanted = |m: &str| crate::pipeline::under_targets(m, targets);
    let mut body = String::new();
    let mut shown = 0;
    for st in &ws.pipeline.stages {
        for p in st.plots.iter().filter(|p| wanted(p)) {
            let path = ws.root.join(p);
            if !path.exists() {
                continue;
            }
            shown += 1;
            let _ = write!(
                body,
                "<h2>{} <small>({})</small></h2>\n<div>",
                esc(p),
                esc(&st.name)
            );
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ["png", "jpg", "jpeg", "gif", "svg"].contains(&ext) {
                let rel = relative(out_dir, &path);
                let _ = write!(body, "<img src=\"{}\" alt=\"{}\">", esc(&rel), esc(p));
            } else {
                let s = read_series(&path)?;
                for (name, y) in &s.columns {
                    body.push_str(&svg_chart(name, &s.x_name, &s.x, y));
                }
            }
            body.push_str("</div>\n");
        }
    }
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>plots</title>\
         <style>body{{font-family:sans-serif;margin:1em}}svg{{margin:4px}}h2{{font-size:1em}}\
         img{{max-width:100%}}</style></head><body>\n<h1>Plots of {}</h1>\n{body}</body></html>\n",
        esc(&ws.pipeline.file.display().to_string())
    );
    Ok((page, shown))
}

/// `target` relative to directory `from` (both absolute), for a link.
fn relative(from: &Path, target: &Path) -> String {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), target.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_columns_become_series_against_the_first() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.csv");
        std::fs::write(&p, "step,loss,name\n0,1.5,a\n10,0.5,b\n").unwrap();
        let s = read_series(&p).unwrap();
        assert_eq!(s.x_name, "step");
        assert_eq!(s.x, [0.0, 10.0]);
        assert_eq!(s.columns, [("loss".to_string(), vec![1.5, 0.5])]);
        let j = d.path().join("c.json");
        std::fs::write(&j, r#"[{"i": 1, "acc": 0.5}, {"i": 2, "acc": 0.75}]"#).unwrap();
        let s = read_series(&j).unwrap();
        assert_eq!(s.columns, [("acc".to_string(), vec![0.5, 0.75])]);
    }

    #[test]
    fn a_chart_maps_the_range_onto_its_frame() {
        let s = svg_chart("loss", "step", &[0.0, 10.0], &[1.0, 3.0]);
        // x 0..10 onto 56..310, y 1..3 onto 150..22.
        assert!(s.contains("points=\"56.0,150.0 310.0,22.0\""), "{s}");
        assert!(
            s.contains(">loss</text>") && s.contains(">step</text>"),
            "{s}"
        );
    }

    #[test]
    fn links_are_relative_to_the_page() {
        assert_eq!(
            relative(Path::new("/r/.acpo"), Path::new("/r/out/a.png")),
            "../out/a.png"
        );
    }
}
