//! The resolved config saved beside a run, and exact resume from its checkpoint.

use super::config::FinetuneConfig;
use super::files::{csv_rows_upto, LOSS_HEADER};
use super::outcome::DriftStop;
use super::probe::Tunable;
use super::Run;
use crate::objective::Calibration;
use crate::{FinetuneError, Result};
use acpo_diffusion::optim::AdamW;
use candle_core::{Tensor, Var};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// The resolved config saved as `config.json` (and compared on resume).
#[derive(Serialize)]
pub(crate) struct Resolved<'a> {
    pub(crate) finetune: &'a FinetuneConfig,
    pub(crate) base_model: &'a acpo_diffusion::UNetConfig,
    pub(crate) base_schedule: &'a acpo_diffusion::config::ScheduleConfig,
    pub(crate) base_dir: String,
    pub(crate) data_dir: String,
    /// The base's statistics that set the loss units (`objective.normalize: base`).
    pub(crate) calibration: Option<Calibration>,
    /// A run on prompts: its training and probe prompt counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) prompts: Option<(usize, usize)>,
}

/// What a checkpoint restores.
pub(crate) struct Resumed {
    pub(crate) step: usize,
    pub(crate) drift_stop: Option<DriftStop>,
    pub(crate) loss_rows: Vec<String>,
    pub(crate) curve_rows: Vec<String>,
}

/// Set every var of `vars` from `tensors` (checkpoint names `model.<var>`).
fn set_vars(
    vars: &[(String, Var)],
    tensors: &HashMap<String, Tensor>,
    origin: &Path,
) -> Result<()> {
    for (name, var) in vars {
        let t = tensors
            .get(&format!("model.{name}"))
            .ok_or_else(|| FinetuneError::BadFile {
                path: origin.to_path_buf(),
                msg: format!("missing `model.{name}`"),
            })?;
        if t.dims() != var.dims() {
            return Err(FinetuneError::BadFile {
                path: origin.to_path_buf(),
                msg: format!(
                    "`model.{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Restore the checkpoint at `path` when it was written with the same resolved config.
pub(crate) fn resume(
    path: &Path,
    run: &Run<'_, impl Tunable>,
    opt: &mut AdamW,
    out: &Path,
    curve_hdr: &str,
) -> Result<Option<Resumed>> {
    let t =
        candle_core::safetensors::load(path, run.device).map_err(|e| FinetuneError::BadFile {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    let same_config = t
        .get("meta.config")
        .and_then(|c| c.to_vec1::<u8>().ok())
        .map(|b| b == run.resolved.as_bytes())
        .unwrap_or(false);
    if !same_config {
        eprintln!(
            "finetune: {} was written with another config; starting fresh",
            path.display()
        );
        return Ok(None);
    }
    let step = t
        .get("meta.step")
        .and_then(|s| s.to_vec1::<u32>().ok())
        .and_then(|v| v.first().copied())
        .ok_or_else(|| FinetuneError::BadFile {
            path: path.to_path_buf(),
            msg: "missing `meta.step`".into(),
        })? as usize;
    set_vars(&run.vars, &t, path)?;
    opt.load_state(&t, "adam.", step)
        .map_err(FinetuneError::optim)?;
    let drift_stop = match t.get("meta.drift_stop") {
        Some(d) => {
            let v = d.to_vec1::<f64>()?;
            Some(DriftStop {
                step: v[0] as usize,
                anchor_distance: v[1],
                threshold: v[2],
            })
        }
        None => None,
    };
    Ok(Some(Resumed {
        step,
        drift_stop,
        loss_rows: csv_rows_upto(&out.join("loss.csv"), LOSS_HEADER, step)?,
        curve_rows: csv_rows_upto(&out.join("curve.csv"), curve_hdr, step)?,
    }))
}
