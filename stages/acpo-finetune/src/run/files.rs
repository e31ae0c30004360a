//! The run's files: atomic writes, `loss.csv` and `curve.csv` (cut back to a checkpoint's
//! step on resume).

use super::outcome::CurveRow;
use crate::{FinetuneError, Result};
use candle_core::Tensor;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> FinetuneError {
    FinetuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(acpo_core::write_atomic(path, bytes)?)
}

pub(crate) fn save_tensors_atomic(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    acpo_core::atomic::write_with(path, |tmp| {
        candle_core::safetensors::save(map, tmp).map_err(FinetuneError::from)
    })
}

pub(crate) fn json_string<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("config types serialise")
}

pub(crate) const LOSS_HEADER: &str = "step,loss,l_perc,q_batch,l_anchor,l_simple,grad_norm";

pub(crate) fn opt_num(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

pub(crate) fn curve_header(judges: &[String]) -> String {
    let mut h = String::from(
        "step,anchor_distance,anchor_distance_ci95,heldout_mse,heldout_mse_ci95,probe_draws,\
         guidance_x0hat,guidance_x0hat_ci95,guidance_x0hat_n,guidance_samples,guidance_samples_ci95,\
         sample_pixel_drift,sample_pixel_drift_ci95,samples",
    );
    for j in judges {
        h.push_str(&format!(",judge_{j},judge_{j}_ci95"));
    }
    h
}

pub(crate) fn curve_line(r: &CurveRow) -> String {
    let mut s = format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        r.step,
        r.anchor_distance.mean,
        r.anchor_distance.ci95,
        r.heldout_mse.mean,
        r.heldout_mse.ci95,
        r.heldout_mse.n,
        r.guidance_x0hat.mean,
        r.guidance_x0hat.ci95,
        r.guidance_x0hat.n,
        r.guidance_samples.mean,
        r.guidance_samples.ci95,
        r.sample_pixel_drift.mean,
        r.sample_pixel_drift.ci95,
        r.guidance_samples.n
    );
    for (_, st) in &r.judges {
        s.push_str(&format!(",{},{}", st.mean, st.ci95));
    }
    s
}

/// Lines of a CSV written by an earlier invocation whose step (first field) is `<= step`.
pub(crate) fn csv_rows_upto(path: &Path, header: &str, step: usize) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Err(FinetuneError::BadFile {
            path: path.to_path_buf(),
            msg: format!("header is not `{header}`"),
        });
    }
    let mut out = vec![];
    for (i, l) in lines.enumerate() {
        let s: usize = l
            .split(',')
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| FinetuneError::BadFile {
                path: path.to_path_buf(),
                msg: format!("line {}: no step number", i + 2),
            })?;
        if s <= step {
            out.push(l.to_string());
        }
    }
    Ok(out)
}

pub(crate) fn write_csv(path: &Path, header: &str, rows: &[String]) -> Result<()> {
    let mut s = String::from(header);
    s.push('\n');
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    write_atomic(path, s.as_bytes())
}
