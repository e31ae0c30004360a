//! The configuration of a fine-tuning run: the method, objective, probe, draws and the
//! base-quality limit, with their defaults and checks.

use crate::objective::ObjectiveConfig;
use crate::refl;
use crate::text::TextConfig;
use crate::{FinetuneError, Result};
use acpo_diffusion::config::Spacing;
use acpo_diffusion::optim::AdamWConfig;
use acpo_iqa::PatchMode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The held-out probe (SPEC section 5 drift and MSE, plus sample quality).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Probe every this many steps (and at step 0 and at the end); default 25.
    pub every: usize,
    /// `(image, t, noise)` draws from the validation split (default 256).
    pub draws: usize,
    /// Seed of the probe draws and of the probe samples' noise (default 0).
    pub seed: u64,
    /// Draws per forward pass (default 64).
    pub batch_size: usize,
    /// Images generated from fixed noise at every probe, for the guidance and judge scores
    /// and the pixel drift against the base's samples (default 32; 0 = none).
    pub samples: usize,
    /// DDIM steps of those samples (default 20).
    pub sample_steps: usize,
    /// DDIM timestep spacing of those samples (default `leading`, the evaluation's).
    pub spacing: Spacing,
    /// Judge names from `judges.yaml` scored on the samples (default brisque, niqe).
    pub judges: Vec<String>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            every: 25,
            draws: 256,
            seed: 0,
            batch_size: 64,
            samples: 32,
            sample_steps: 20,
            spacing: Spacing::Leading,
            judges: vec!["brisque".into(), "niqe".into()],
        }
    }
}

/// Where the training `x_t` of a step come from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DrawSource {
    /// Real training images noised forward to a timestep of the objective's window (default).
    #[default]
    Forward,
    /// ReFL-style: the current model's own DDIM trajectory from noise, stopped (without
    /// gradient) at a timestep of the objective's window, the same timestep for the whole batch
    /// (see [`refl::partial_sample_batch`]). No data noise, so methods with a data term refuse it.
    OnPolicy,
}

/// The trajectory of `draws: on-policy` (its stop window is the objective's `[t_min, t_max]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OnPolicyConfig {
    /// DDIM steps of the whole trajectory (default 20).
    pub sample_steps: usize,
    /// DDIM timestep spacing (default `leading`, the evaluation's).
    pub spacing: Spacing,
}

impl Default for OnPolicyConfig {
    fn default() -> Self {
        Self {
            sample_steps: 20,
            spacing: Spacing::Leading,
        }
    }
}

impl OnPolicyConfig {
    /// The partial-sampling parameters of a run whose objective window is `[t_min, t_max]`.
    pub fn partial(&self, objective: &ObjectiveConfig) -> refl::PartialSamplingConfig {
        refl::PartialSamplingConfig {
            sample_steps: self.sample_steps,
            spacing: self.spacing,
            stop_t_min: objective.t_min,
            stop_t_max: objective.t_max,
            eta: 0.0,
        }
    }
}

/// Everything one `finetune` run reads (params `finetune.defaults` deep-merged with
/// `finetune.<benchmark>`, then the command line's `--method`/`--lambda-a`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The objective: method, lambdas, timestep window, `w(t)`, `Q` normalisation.
    pub objective: ObjectiveConfig,
    /// AdamW (lr default 1e-5, no weight decay).
    pub optim: AdamWConfig,
    /// Optimiser steps (default 200).
    pub steps: usize,
    /// Images per step (default 16).
    pub batch_size: usize,
    /// Seed of the training draws (default 0).
    pub seed: u64,
    /// Global gradient-norm clip (default 1.0; 0 = off).
    pub grad_clip: f64,
    /// Use only the first this many training images (default 0 = all).
    pub train_subset: usize,
    /// Write a checkpoint every this many steps (default 50; the end always writes one).
    pub checkpoint_every: usize,
    /// CNNIQA patch grid for the guidance (default inclusive: every full 32x32 patch).
    pub guidance_patch_mode: PatchMode,
    /// Stop when the probe's anchor distance exceeds this value (default none).
    pub drift_stop: Option<f64>,
    /// Refuse a base whose KID (its evaluation, [`FinetunePaths::base_eval`]) is above this
    /// (default none: no gate).
    pub base_max_kid: Option<f64>,
    /// Where the training `x_t` come from (default `forward`; `on-policy`: ReFL-style).
    pub draws: DrawSource,
    /// The trajectory of `draws: on-policy`.
    pub on_policy: OnPolicyConfig,
    /// The held-out probe.
    pub probe: ProbeConfig,
    /// Runs on prompts ([`FinetunePaths::text`] given): the guidance scale of the trajectories
    /// (default: [`TextConfig`]'s). Not written when unset, so runs without prompts keep
    /// their config bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextConfig>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            objective: ObjectiveConfig::default(),
            optim: AdamWConfig::default(),
            steps: 200,
            batch_size: 16,
            seed: 0,
            grad_clip: 1.0,
            train_subset: 0,
            checkpoint_every: 50,
            guidance_patch_mode: PatchMode::Inclusive,
            drift_stop: None,
            base_max_kid: None,
            draws: DrawSource::Forward,
            on_policy: OnPolicyConfig::default(),
            probe: ProbeConfig::default(),
            text: None,
        }
    }
}

/// Deep-merge `overlay` onto `base` (objects merge key by key, anything else replaces).
pub fn merge_json(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

impl FinetuneConfig {
    /// The classifier-free guidance scale of a run on prompts: `text.guidance`, or its
    /// default when `text` is unset.
    pub fn guidance_scale(&self) -> f64 {
        self.text.clone().unwrap_or_default().guidance
    }

    /// Parse the deep merge of `layers` (first is lowest); `what` names them in errors.
    pub fn from_layers(layers: &[Value], what: &str) -> Result<Self> {
        let mut v = Value::Object(Default::default());
        for l in layers {
            if !l.is_null() {
                merge_json(&mut v, l);
            }
        }
        serde_json::from_value(v).map_err(|e| FinetuneError::config(what, e.to_string()))
    }

    /// Check ranges (the objective against a schedule of `num_steps` timesteps) for a run
    /// without prompts.
    pub fn validate(&self, num_steps: usize) -> Result<()> {
        self.validate_for(num_steps, false)
    }

    /// Check ranges; `on_prompts`: a run on prompts, which draws on-policy and takes its data
    /// term from the base's captioned images.
    pub fn validate_for(&self, num_steps: usize, on_prompts: bool) -> Result<()> {
        if on_prompts {
            if self.draws != DrawSource::OnPolicy {
                return Err(FinetuneError::config(
                    "draws",
                    "prompts have no images to noise forward: a run on prompts needs draws: on-policy",
                ));
            }
            self.text.clone().unwrap_or_default().validate()?;
        }
        self.objective.validate(num_steps)?;
        let pos = |name: &str, v: usize| {
            if v == 0 {
                Err(FinetuneError::config(name, "must be > 0"))
            } else {
                Ok(())
            }
        };
        pos("steps", self.steps)?;
        pos("batch_size", self.batch_size)?;
        pos("checkpoint_every", self.checkpoint_every)?;
        pos("probe.every", self.probe.every)?;
        pos("probe.draws", self.probe.draws)?;
        pos("probe.batch_size", self.probe.batch_size)?;
        if self.probe.samples > 0 {
            pos("probe.sample_steps", self.probe.sample_steps)?;
            let p = &self.probe;
            refl::trajectory(
                num_steps,
                p.sample_steps,
                p.spacing,
                0.0,
                "probe.sample_steps",
            )?;
        }
        if self.draws == DrawSource::OnPolicy {
            if self.objective.lambdas().d != 0.0 && !on_prompts {
                return Err(FinetuneError::config(
                    "draws",
                    format!(
                        "on-policy draws have no data noise: method {} has a data term (use forward draws)",
                        self.objective.method
                    ),
                ));
            }
            let o = &self.on_policy;
            refl::trajectory(
                num_steps,
                o.sample_steps,
                o.spacing,
                0.0,
                "on_policy.sample_steps",
            )?;
        }
        if !(self.optim.lr.is_finite() && self.optim.lr > 0.0) {
            return Err(FinetuneError::config("optim.lr", "must be > 0"));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(FinetuneError::config("grad_clip", "must be >= 0"));
        }
        if let Some(d) = self.drift_stop {
            if !(d.is_finite() && d > 0.0) {
                return Err(FinetuneError::config("drift_stop", "must be > 0 (or null)"));
            }
        }
        if let Some(k) = self.base_max_kid {
            if !(k.is_finite() && k > 0.0) {
                return Err(FinetuneError::config(
                    "base_max_kid",
                    "must be > 0 (or null)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_draw_and_spacing_names_are_refused_naming_them() {
        let bad = |v: serde_json::Value| {
            FinetuneConfig::from_layers(&[v], "finetune.defaults")
                .unwrap_err()
                .to_string()
        };
        let e = bad(serde_json::json!({"draws": "sideways"}));
        assert!(e.contains("sideways") && e.contains("on-policy"), "{e}");
        let e = bad(serde_json::json!({"probe": {"spacing": "middle"}}));
        assert!(e.contains("middle") && e.contains("trailing"), "{e}");
        let c = FinetuneConfig::from_layers(
            &[serde_json::json!({"draws": "on-policy", "on_policy": {"spacing": "trailing"}})],
            "finetune.defaults",
        )
        .unwrap();
        assert_eq!(c.draws, DrawSource::OnPolicy);
        assert_eq!(c.on_policy.spacing, Spacing::Trailing);
        let mut c = FinetuneConfig::default();
        c.on_policy.sample_steps = 2000;
        c.draws = DrawSource::OnPolicy;
        let e = c.validate(1000).unwrap_err().to_string();
        assert!(e.contains("on_policy.sample_steps"), "{e}");
    }

    #[test]
    fn the_limit_must_be_positive() {
        let c = FinetuneConfig {
            base_max_kid: Some(-1.0),
            ..FinetuneConfig::default()
        };
        let e = c.validate(1000).unwrap_err();
        assert!(e.to_string().contains("base_max_kid"), "{e}");
    }
}
