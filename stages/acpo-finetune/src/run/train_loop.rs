//! The optimisation loop of a run, its checkpoints and its final outputs.

use super::config::FinetuneConfig;
use super::files::{
    curve_header, curve_line, json_string, opt_num, save_tensors_atomic, write_atomic, write_csv,
    LOSS_HEADER,
};
use super::inputs::RunOptions;
use super::outcome::{CurveRow, DriftStop, FinetuneInvocation, FinetuneOutcome};
use super::probe::Tunable;
use super::resume::resume;
use super::Run;
use crate::train::train_step_with_data;
use crate::{FinetuneError, Result};
use acpo_diffusion::optim::AdamW;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// The optimisation loop of a run, its checkpoints and its final outputs (shared by every
/// kind of network).
pub(crate) fn run_loop<M: Tunable>(
    cfg: &FinetuneConfig,
    out: &Path,
    run: Run<'_, M>,
    opts: &RunOptions,
) -> Result<Option<FinetuneOutcome>> {
    let (model, reference, schedule, guides) = (run.model, run.reference, run.schedule, run.guides);
    let mut opt = AdamW::new(run.vars.clone(), cfg.optim.clone()).map_err(FinetuneError::optim)?;
    let judge_names: Vec<String> = run
        .probe
        .judges
        .iter()
        .map(|j| j.name().to_string())
        .collect();
    let curve_hdr = curve_header(&judge_names);
    let ckpt_path = out.join("checkpoint.safetensors");
    let resumed = match !opts.fresh && ckpt_path.exists() {
        true => resume(&ckpt_path, &run, &mut opt, out, &curve_hdr)?,
        false => None,
    };
    let (start, mut drift_stop, mut loss_rows, mut curve_rows) = match resumed {
        Some(r) => (r.step, r.drift_stop, r.loss_rows, r.curve_rows),
        None => (0, None, vec![], vec![]),
    };
    let save_ckpt = |opt: &AdamW,
                     step: usize,
                     loss_rows: &[String],
                     curve_rows: &[String],
                     stop: Option<&DriftStop>|
     -> Result<()> {
        write_csv(&out.join("loss.csv"), LOSS_HEADER, loss_rows)?;
        write_csv(&out.join("curve.csv"), &curve_hdr, curve_rows)?;
        let mut map: HashMap<String, Tensor> = opt.state_tensors("adam.");
        for (n, v) in &run.vars {
            map.insert(format!("model.{n}"), v.as_tensor().clone());
        }
        map.insert(
            "meta.step".into(),
            Tensor::new(&[step as u32], &Device::Cpu)?,
        );
        map.insert(
            "meta.config".into(),
            Tensor::new(run.resolved.as_bytes(), &Device::Cpu)?,
        );
        if let Some(d) = stop {
            map.insert(
                "meta.drift_stop".into(),
                Tensor::new(
                    &[d.step as f64, d.anchor_distance, d.threshold],
                    &Device::Cpu,
                )?,
            );
        }
        save_tensors_atomic(&map, &ckpt_path)
    };

    let probe = &run.probe;
    let mut base_row = None;
    if start == 0 {
        let row = probe.row(0, model, reference, guides, schedule, cfg)?;
        curve_rows.push(curve_line(&row));
        base_row = Some(row);
    }
    let pb = acpo_core::progress::bar_with_template(
        cfg.steps as u64,
        "finetune {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}",
    );
    pb.set_position(start as u64);
    let t0 = Instant::now();
    let mut last_row: Option<CurveRow> = None;
    let mut step = start;
    // a run that stopped on drift stays stopped
    while step < cfg.steps && drift_stop.is_none() {
        let batch = (run.draw)(step as u64)?;
        let data = (run.data)(step as u64)?;
        let st = train_step_with_data(
            model,
            reference,
            guides.objective,
            schedule,
            &cfg.objective,
            &batch,
            data.as_ref(),
            &mut opt,
            cfg.grad_clip,
        )?;
        step += 1;
        loss_rows.push(format!(
            "{},{},{},{},{},{},{}",
            step,
            st.loss,
            opt_num(st.perceptual),
            opt_num(st.quality),
            opt_num(st.anchor),
            opt_num(st.simple),
            st.grad_norm
        ));
        pb.inc(1);
        pb.set_message(format!("loss {:.4}", st.loss));
        if step.is_multiple_of(cfg.probe.every) || step == cfg.steps {
            let row = probe.row(step, model, reference, guides, schedule, cfg)?;
            curve_rows.push(curve_line(&row));
            if let Some(th) = cfg.drift_stop {
                if row.anchor_distance.mean > th {
                    drift_stop = Some(DriftStop {
                        step,
                        anchor_distance: row.anchor_distance.mean,
                        threshold: th,
                    });
                }
            }
            last_row = Some(row);
            if drift_stop.is_some() {
                break;
            }
        }
        if step.is_multiple_of(cfg.checkpoint_every) && step < cfg.steps {
            save_ckpt(&opt, step, &loss_rows, &curve_rows, drift_stop.as_ref())?;
        }
        if opts.stop_after == Some(step) && step < cfg.steps {
            save_ckpt(&opt, step, &loss_rows, &curve_rows, drift_stop.as_ref())?;
            pb.finish_and_clear();
            return Ok(None);
        }
    }
    pb.finish_and_clear();
    let train_seconds = t0.elapsed().as_secs_f64();
    let done = step - start;

    // final outputs
    let last = match last_row {
        Some(r) => r,
        None => probe.row(step, model, reference, guides, schedule, cfg)?,
    };
    let base = match base_row {
        Some(r) => r,
        None => probe.row(0, reference, reference, guides, schedule, cfg)?,
    };
    save_ckpt(&opt, step, &loss_rows, &curve_rows, drift_stop.as_ref())?;
    (run.save_model)(&out.join("model.safetensors"))?;
    write_atomic(&out.join("config.json"), run.resolved.as_bytes())?;
    let tail = (loss_rows.len() / 10).max(1);
    let final_train_loss = loss_rows[loss_rows.len().saturating_sub(tail)..]
        .iter()
        .filter_map(|l| l.split(',').nth(1).and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / tail as f64;
    let lambdas = cfg.objective.lambdas();
    let outcome = FinetuneOutcome {
        method: cfg.objective.method,
        lambda_p: lambdas.p,
        lambda_a: lambdas.a,
        lambda_d: lambdas.d,
        steps: step,
        drift_stop,
        base,
        last,
        final_train_loss,
        device: format!("{:?}", run.device),
        num_params: run.num_params,
        train_images: run.train_images,
        calibration: run.calibration,
        seed: cfg.seed,
        invocation: FinetuneInvocation {
            resumed_from: start,
            steps_done: done,
            train_seconds,
            steps_per_s: if train_seconds > 0.0 {
                done as f64 / train_seconds
            } else {
                0.0
            },
        },
    };
    write_atomic(&out.join("metrics.json"), json_string(&outcome).as_bytes())?;
    Ok(Some(outcome))
}
