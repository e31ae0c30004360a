//! The ACPO objective (SPEC section 2):
//!
//! ```text
//! x0_hat   = clamp((x_t - sqrt(1 - ab_t) * eps_theta(x_t, t, c)) / sqrt(ab_t), -1, 1)
//! L_perc   = - mean( w(t) * (Q(to_iqa(x0_hat)) - q_offset) / q_scale )
//! L_anchor = mean( (eps_theta(x_t, t, c) - stopgrad(eps_ref(x_t, t, c)))^2 ) / eps_scale
//! L_simple = mean( (eps - eps_theta(x_t, t, c))^2 ) / eps_scale   (only where data images exist)
//! L        = lambda_p * L_perc + lambda_a * L_anchor + lambda_d * L_simple
//! ```
//!
//! Means of squared differences are per element (as in the DDPM loss), so `L_anchor *
//! eps_scale` is the drift metric "anchor distance" and `L_simple * eps_scale` the held-out
//! "MSE" of SPEC section 5. `to_iqa` maps `[-1, 1]` to `[0, 1]`.
//!
//! **Normalisation** ([`Normalize::Base`], see [`Calibration`]): `q_offset`, `q_scale` are the
//! mean and standard deviation of the frozen base's `Q(x0_hat)` and `eps_scale` the base's
//! noise-prediction MSE, all on the same calibration draws from the training distribution. A
//! unit of `L_perc` is then one standard deviation of the base's guidance score, and a unit of
//! `L_anchor` a drift as large as the base's own denoising error; `lambda_a = 1` weighs the
//! two the same, whatever the guidance model's or the dataset's scale.

use crate::{FinetuneError, Result};
use acpo_diffusion::NoiseSchedule;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// A noise predictor `eps(x_t, t, c)`.
///
/// `x_t` is `[N, C, H, W]`, `t` holds the integer timesteps as `U32 [N]`, `cond` is the
/// condition (for example text embeddings) or `None` for unconditional models.
pub trait EpsModel {
    /// Predict the noise in `x_t`.
    fn eps(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> candle_core::Result<Tensor>;
}

impl<F> EpsModel for F
where
    F: Fn(&Tensor, &Tensor, Option<&Tensor>) -> candle_core::Result<Tensor>,
{
    fn eps(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self(x_t, t, cond)
    }
}

/// A frozen, differentiable no-reference quality model, higher = better.
pub trait Guidance {
    /// Score RGB images `[N, 3, H, W]` with values in `[0, 1]`; returns `[N]`.
    fn quality(&self, images01: &Tensor) -> candle_core::Result<Tensor>;
}

impl<F> Guidance for F
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    fn quality(&self, images01: &Tensor) -> candle_core::Result<Tensor> {
        self(images01)
    }
}

/// The objective's view of a noise schedule: acpo-diffusion's [`NoiseSchedule`] (the one
/// owner of betas and `alpha_bar`) and whether `x0_hat` is clamped to the image range.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    noise: NoiseSchedule,
    /// `x0_hat` is clamped to `[-limit, limit]` when asked (`None`: never; latents are not
    /// in `[-1, 1]`).
    x0_limit: Option<f64>,
}

impl Schedule {
    /// The objective over `noise`, clamping `x0_hat` to `[-1, 1]` when asked.
    pub fn new(noise: NoiseSchedule) -> Self {
        Self {
            noise,
            x0_limit: Some(1.0),
        }
    }

    /// Use the given `alpha_bar_t` values (strictly in `(0, 1]`, non-increasing).
    pub fn from_alpha_bar(alpha_bar: Vec<f64>) -> Result<Self> {
        let noise = NoiseSchedule::from_alphas_cumprod(alpha_bar).map_err(|e| match e {
            acpo_diffusion::DiffusionError::Config { field, msg } => {
                FinetuneError::Config { field, msg }
            }
            other => FinetuneError::config("alpha_bar", other.to_string()),
        })?;
        Ok(Self::new(noise))
    }

    /// Whether `x0_hat` (and the DDIM trajectories over this schedule) are clamped to the
    /// image range.
    pub fn clamps_x0(&self) -> bool {
        self.x0_limit.is_some()
    }

    /// The same schedule for a latent model: `x0_hat` is never clamped (pixel models clamp
    /// it to the image range `[-1, 1]`).
    pub fn without_x0_clamp(self) -> Self {
        Self {
            x0_limit: None,
            ..self
        }
    }

    /// The linear beta schedule of Ho et al. (2020): `beta_t` from `beta_start` to `beta_end`.
    pub fn linear(num_steps: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        if num_steps < 2 {
            return Err(FinetuneError::config("num_steps", "must be at least 2"));
        }
        Ok(Self::new(NoiseSchedule::linear(
            num_steps, beta_start, beta_end,
        )))
    }

    /// Number of timesteps `T`.
    pub fn num_steps(&self) -> usize {
        self.noise.timesteps()
    }

    /// `alpha_bar_t`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.noise.alpha_bar(t)
    }

    /// All `alpha_bar_t`.
    pub fn alpha_bars(&self) -> &[f64] {
        &self.noise.alphas_cumprod
    }

    fn check(&self, t: &[usize]) -> Result<()> {
        if let Some(bad) = t.iter().find(|&&t| t >= self.num_steps()) {
            return Err(FinetuneError::config(
                "t",
                format!("timestep {bad} is outside 0..{}", self.num_steps()),
            ));
        }
        Ok(())
    }

    /// Per-sample `[N, 1, 1, 1]` tensors of `f(alpha_bar_t)`.
    fn per_sample(
        &self,
        t: &[usize],
        f: impl Fn(f64) -> f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.check(t)?;
        Ok(self.noise.per_image(t, f, dtype, device)?)
    }

    /// The timesteps as the `U32 [N]` tensor that [`EpsModel::eps`] takes.
    pub fn t_tensor(t: &[usize], device: &Device) -> Result<Tensor> {
        let v: Vec<u32> = t.iter().map(|&t| t as u32).collect();
        Ok(Tensor::from_vec(v, t.len(), device)?)
    }

    /// Forward noising `x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps` (acpo-diffusion's
    /// `q_sample`, after checking the timesteps).
    pub fn add_noise(&self, x0: &Tensor, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.check(t)?;
        Ok(self.noise.q_sample(x0, t, eps)?)
    }

    /// The one-step estimate `x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)`, clamped to
    /// `[-1, 1]` when `clamp` is set (unless the schedule is [`Self::without_x0_clamp`]).
    /// Differentiable in `eps` (zero gradient where clamped).
    pub fn x0_hat(&self, x_t: &Tensor, eps: &Tensor, t: &[usize], clamp: bool) -> Result<Tensor> {
        let (dt, dev) = (x_t.dtype(), x_t.device());
        let inv_a = self.per_sample(t, |ab| 1.0 / ab.sqrt(), dt, dev)?;
        let b = self.per_sample(t, |ab| (1.0 - ab).sqrt(), dt, dev)?;
        let x0 = (x_t - eps.broadcast_mul(&b)?)?.broadcast_mul(&inv_a)?;
        Ok(match (clamp, self.x0_limit) {
            (true, Some(l)) => x0.clamp(-l, l)?,
            _ => x0,
        })
    }
}

/// Which terms of the objective a run uses (SPEC section 2, "Methods").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Method {
    /// `lambda_a = lambda_d = 0`: guidance only (shows reward hacking and drift).
    #[serde(rename = "perceptual-only")]
    PerceptualOnly,
    /// `lambda_a = 0`: guidance plus the denoising loss on real images (ReFL-style).
    #[serde(rename = "data-anchor")]
    DataAnchor,
    /// `lambda_d = 0`: guidance plus the anchor to the frozen base (the paper's method).
    #[default]
    #[serde(rename = "acpo")]
    Acpo,
    /// All three terms (also spelt `acpo-data`, for stage and folder names).
    #[serde(rename = "acpo+data", alias = "acpo-data")]
    AcpoData,
}

impl Method {
    /// All methods, in the order of SPEC's table.
    pub const ALL: [Method; 4] = [
        Method::PerceptualOnly,
        Method::DataAnchor,
        Method::Acpo,
        Method::AcpoData,
    ];

    /// The name used in params and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::PerceptualOnly => "perceptual-only",
            Method::DataAnchor => "data-anchor",
            Method::Acpo => "acpo",
            Method::AcpoData => "acpo+data",
        }
    }

    /// Whether the anchor term is on.
    pub fn uses_anchor(self) -> bool {
        matches!(self, Method::Acpo | Method::AcpoData)
    }

    /// Whether the data (denoising) term is on.
    pub fn uses_data(self) -> bool {
        matches!(self, Method::DataAnchor | Method::AcpoData)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Method {
    type Err = FinetuneError;
    fn from_str(s: &str) -> Result<Self> {
        if s == "acpo-data" {
            return Ok(Method::AcpoData);
        }
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                FinetuneError::config(
                    "method",
                    format!(
                        "unknown method `{s}`; expected one of perceptual-only, data-anchor, acpo, acpo+data (or acpo-data)"
                    ),
                )
            })
    }
}

/// The per-timestep weight `w(t)` of the perceptual term.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// `w(t) = 1`.
    #[default]
    One,
    /// `w(t) = alpha_bar_t`: trusts `x0_hat` more at small `t`.
    AlphaBar,
}

/// How the terms are scaled (see the module documentation).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// `q_offset`, `q_scale` and `eps_scale` as configured.
    #[default]
    None,
    /// Measured on the base before the first step ([`Calibration`]); the configured
    /// `q_offset`, `q_scale` and `eps_scale` are replaced.
    Base,
}

/// The base model's statistics on the calibration draws, which [`Normalize::Base`] uses as
/// the units of the loss terms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// Number of `(image, t, noise)` draws.
    pub draws: usize,
    /// Mean of the base's guidance `Q(x0_hat)` (becomes `q_offset`).
    pub q_mean: f64,
    /// Its standard deviation across draws (becomes `q_scale`).
    pub q_std: f64,
    /// The base's noise-prediction MSE, per element (becomes `eps_scale`).
    pub eps_mse: f64,
}

impl Calibration {
    /// Statistics of the frozen `base` on `batches` (data batches with their noise).
    pub fn measure(
        base: &dyn EpsModel,
        guidance: &dyn Guidance,
        schedule: &Schedule,
        batches: &[ObjectiveBatch],
    ) -> Result<Self> {
        let (mut qs, mut sq, mut elems) = (Vec::new(), 0.0, 0usize);
        for b in batches {
            let eps = b.eps.as_ref().ok_or_else(|| {
                FinetuneError::config("calibration", "calibration draws need their noise")
            })?;
            let t_tensor = Schedule::t_tensor(&b.t, b.x_t.device())?;
            let e = base.eps(&b.x_t, &t_tensor, b.cond.as_ref())?.detach();
            sq += scalar(&(eps - &e)?.sqr()?.sum_all()?)?;
            elems += e.elem_count();
            let x0 = schedule.x0_hat(&b.x_t, &e, &b.t, true)?;
            let q = guidance.quality(&((x0 + 1.0)? * 0.5)?)?.detach();
            qs.extend(q.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        let n = qs.len();
        if n < 2 || elems == 0 {
            return Err(FinetuneError::config(
                "objective.calibration_draws",
                format!("need at least 2 calibration draws, got {n}"),
            ));
        }
        let q_mean = qs.iter().sum::<f64>() / n as f64;
        let q_std = (qs.iter().map(|q| (q - q_mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        let eps_mse = sq / elems as f64;
        if !(q_std > 0.0 && q_std.is_finite() && eps_mse > 0.0 && eps_mse.is_finite()) {
            return Err(FinetuneError::config(
                "objective.normalize",
                format!(
                    "the base's calibration statistics cannot scale the loss (Q std {q_std}, eps MSE {eps_mse}); use normalize: none"
                ),
            ));
        }
        Ok(Self {
            draws: n,
            q_mean,
            q_std,
            eps_mse,
        })
    }
}

/// The effective weights of the three terms after the method's mask.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Lambdas {
    pub p: f64,
    pub a: f64,
    pub d: f64,
}

/// Parameters of the objective.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// Which terms are on (default `acpo`); the lambdas of the terms a method does not use are
    /// set to 0 (see [`ObjectiveConfig::lambdas`]).
    pub method: Method,
    /// Weight of the perceptual term (default 1).
    pub lambda_p: f64,
    /// Weight of the anchor term (default 1).
    pub lambda_a: f64,
    /// Weight of the data (denoising) term (default 1).
    pub lambda_d: f64,
    /// Smallest timestep drawn for a training sample (default 50: below it `x0_hat` is nearly
    /// the data image and the perceptual gradient, scaled by `sqrt(1 - ab)/sqrt(ab)`, vanishes).
    pub t_min: usize,
    /// Largest timestep drawn, inclusive (default 600: above it `x0_hat` is a blur that an IQA
    /// model cannot rate meaningfully).
    pub t_max: usize,
    /// `w(t)` (default `one`).
    pub weighting: Weighting,
    /// `Q_norm = (Q - q_offset) / q_scale` (default 0).
    pub q_offset: f64,
    /// See `q_offset` (default 1; must be > 0).
    pub q_scale: f64,
    /// The unit of the anchor and data terms (default 1; must be > 0).
    pub eps_scale: f64,
    /// `none` (default: the scales above as configured) or `base` (measured on the base).
    pub normalize: Normalize,
    /// Draws from the training window that `normalize: base` measures (default 256).
    pub calibration_draws: usize,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            method: Method::Acpo,
            lambda_p: 1.0,
            lambda_a: 1.0,
            lambda_d: 1.0,
            t_min: 50,
            t_max: 600,
            weighting: Weighting::One,
            q_offset: 0.0,
            q_scale: 1.0,
            eps_scale: 1.0,
            normalize: Normalize::None,
            calibration_draws: 256,
        }
    }
}

impl ObjectiveConfig {
    /// The effective lambdas: the configured ones with the terms the method does not use set to 0.
    pub fn lambdas(&self) -> Lambdas {
        Lambdas {
            p: self.lambda_p,
            a: if self.method.uses_anchor() {
                self.lambda_a
            } else {
                0.0
            },
            d: if self.method.uses_data() {
                self.lambda_d
            } else {
                0.0
            },
        }
    }

    /// This config with the calibration's scales (`q_offset`, `q_scale`, `eps_scale`).
    pub fn calibrated(&self, c: &Calibration) -> Self {
        Self {
            q_offset: c.q_mean,
            q_scale: c.q_std,
            eps_scale: c.eps_mse,
            ..self.clone()
        }
    }

    /// Check ranges against a schedule of `num_steps` timesteps.
    pub fn validate(&self, num_steps: usize) -> Result<()> {
        for (name, v) in [
            ("lambda_p", self.lambda_p),
            ("lambda_a", self.lambda_a),
            ("lambda_d", self.lambda_d),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(FinetuneError::config(
                    name,
                    format!("{v} is not a finite number >= 0"),
                ));
            }
        }
        if !(self.q_scale.is_finite() && self.q_scale > 0.0) {
            return Err(FinetuneError::config(
                "q_scale",
                format!("{} is not a finite number > 0", self.q_scale),
            ));
        }
        if !(self.eps_scale.is_finite() && self.eps_scale > 0.0) {
            return Err(FinetuneError::config(
                "eps_scale",
                format!("{} is not a finite number > 0", self.eps_scale),
            ));
        }
        if self.normalize == Normalize::Base && self.calibration_draws < 2 {
            return Err(FinetuneError::config(
                "calibration_draws",
                "normalize: base needs at least 2 calibration draws",
            ));
        }
        if !self.q_offset.is_finite() {
            return Err(FinetuneError::config("q_offset", "must be finite"));
        }
        if self.t_min > self.t_max || self.t_max >= num_steps {
            return Err(FinetuneError::config(
                "t_min/t_max",
                format!(
                    "need t_min <= t_max < T = {num_steps}, got [{}, {}]",
                    self.t_min, self.t_max
                ),
            ));
        }
        Ok(())
    }
}

/// One batch for the objective. `eps` is the noise that made `x_t` from a data image (needed
/// for `L_simple`); it is `None` on the ReFL path, where `x_t` comes from sampling.
#[derive(Clone, Debug)]
pub struct ObjectiveBatch {
    pub x_t: Tensor,
    pub t: Vec<usize>,
    pub eps: Option<Tensor>,
    pub cond: Option<Tensor>,
}

/// The loss to differentiate and the detached values of its terms (terms with a zero lambda
/// are not computed and are `None`).
#[derive(Debug)]
pub struct LossOutput {
    /// `L`, a scalar tensor connected to the tuned model's variables.
    pub loss: Tensor,
    /// `L_perc` (normalised, weighted).
    pub perceptual: Option<f64>,
    /// Mean raw guidance score `Q` of `x0_hat` (higher = better).
    pub quality: Option<f64>,
    /// The anchor distance, per element (`L_anchor * eps_scale`, unnormalised).
    pub anchor: Option<f64>,
    /// The data term's MSE, per element (`L_simple * eps_scale`, unnormalised).
    pub simple: Option<f64>,
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The perceptual term `-mean(w(t) * Q_norm(to_iqa(x0_hat)))` for a given `eps_theta`; returns
/// the term and the mean raw `Q`.
pub fn perceptual_term(
    guidance: &dyn Guidance,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    x_t: &Tensor,
    eps_theta: &Tensor,
    t: &[usize],
) -> Result<(Tensor, Tensor)> {
    let x0_hat = schedule.x0_hat(x_t, eps_theta, t, true)?;
    let images01 = ((x0_hat + 1.0)? * 0.5)?;
    let q = guidance.quality(&images01)?;
    let n = t.len();
    if q.dims() != [n] {
        return Err(FinetuneError::config(
            "guidance",
            format!("quality() returned shape {:?}, expected [{n}]", q.dims()),
        ));
    }
    let q_norm = ((&q - cfg.q_offset)? / cfg.q_scale)?;
    let weighted = match cfg.weighting {
        Weighting::One => q_norm,
        Weighting::AlphaBar => {
            let w: Vec<f64> = t.iter().map(|&t| schedule.alpha_bar(t)).collect();
            let w = Tensor::from_vec(w, n, q.device())?.to_dtype(q.dtype())?;
            (q_norm * w)?
        }
    };
    Ok((weighted.mean_all()?.neg()?, q.mean_all()?))
}

/// Evaluate `L = lambda_p L_perc + lambda_a L_anchor + lambda_d L_simple` on one batch.
///
/// `model` is the network being tuned (its variables receive the gradient); `reference` is the
/// frozen base, evaluated on the same `x_t, t, c` and detached. A term whose effective lambda is
/// 0 is skipped entirely (no forward pass of the reference or the guidance model).
pub fn acpo_loss(
    model: &dyn EpsModel,
    reference: &dyn EpsModel,
    guidance: &dyn Guidance,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    batch: &ObjectiveBatch,
) -> Result<LossOutput> {
    acpo_loss_with_data(model, reference, guidance, schedule, cfg, batch, None)
}

/// As [`acpo_loss`], with the data term `L_simple` on its own batch `data` when given: the
/// perceptual and anchor terms on `batch` (e.g. on-policy draws of prompts, which have no
/// data noise), the denoising loss on data images (the base's training pairs). Without
/// `data`, every term uses `batch`.
pub fn acpo_loss_with_data(
    model: &dyn EpsModel,
    reference: &dyn EpsModel,
    guidance: &dyn Guidance,
    schedule: &Schedule,
    cfg: &ObjectiveConfig,
    batch: &ObjectiveBatch,
    data: Option<&ObjectiveBatch>,
) -> Result<LossOutput> {
    let lambdas = cfg.lambdas();
    let t_tensor = Schedule::t_tensor(&batch.t, batch.x_t.device())?;
    let eps_theta = model.eps(&batch.x_t, &t_tensor, batch.cond.as_ref())?;
    if eps_theta.dims() != batch.x_t.dims() {
        return Err(FinetuneError::config(
            "model",
            format!(
                "eps() returned shape {:?} for x_t of shape {:?}",
                eps_theta.dims(),
                batch.x_t.dims()
            ),
        ));
    }
    let mut loss = eps_theta.zeros_like()?.sum_all()?;
    let mut out = LossOutput {
        loss: loss.clone(),
        perceptual: None,
        quality: None,
        anchor: None,
        simple: None,
    };
    if lambdas.p > 0.0 {
        let (perc, q) = perceptual_term(guidance, schedule, cfg, &batch.x_t, &eps_theta, &batch.t)?;
        out.perceptual = Some(scalar(&perc)?);
        out.quality = Some(scalar(&q)?);
        loss = (loss + (perc * lambdas.p)?)?;
    }
    if lambdas.a > 0.0 {
        let eps_ref = reference
            .eps(&batch.x_t, &t_tensor, batch.cond.as_ref())?
            .detach();
        let anchor = (&eps_theta - eps_ref)?.sqr()?.mean_all()?;
        out.anchor = Some(scalar(&anchor)?);
        loss = (loss + (anchor * (lambdas.a / cfg.eps_scale))?)?;
    }
    if lambdas.d > 0.0 {
        let (db, eps_theta_d) = match data {
            Some(d) => {
                let td = Schedule::t_tensor(&d.t, d.x_t.device())?;
                (d, model.eps(&d.x_t, &td, d.cond.as_ref())?)
            }
            None => (batch, eps_theta.clone()),
        };
        let eps = db.eps.as_ref().ok_or_else(|| {
            FinetuneError::config(
                "lambda_d",
                "the data term needs the noise of a data image; this batch has none (ReFL path)",
            )
        })?;
        let simple = (eps - &eps_theta_d)?.sqr()?.mean_all()?;
        out.simple = Some(scalar(&simple)?);
        loss = (loss + (simple * (lambdas.d / cfg.eps_scale))?)?;
    }
    out.loss = loss;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_masks_lambdas() {
        let mut cfg = ObjectiveConfig {
            lambda_p: 2.0,
            lambda_a: 3.0,
            lambda_d: 4.0,
            ..Default::default()
        };
        let expect = [
            (Method::PerceptualOnly, (2.0, 0.0, 0.0)),
            (Method::DataAnchor, (2.0, 0.0, 4.0)),
            (Method::Acpo, (2.0, 3.0, 0.0)),
            (Method::AcpoData, (2.0, 3.0, 4.0)),
        ];
        for (m, (p, a, d)) in expect {
            cfg.method = m;
            assert_eq!(cfg.lambdas(), Lambdas { p, a, d }, "{m}");
            assert_eq!(m.as_str().parse::<Method>().unwrap(), m);
        }
        assert!("base".parse::<Method>().is_err());
        assert_eq!("acpo-data".parse::<Method>().unwrap(), Method::AcpoData);
    }

    #[test]
    fn config_parses_and_rejects_unknown_fields() {
        let cfg: ObjectiveConfig =
            serde_json::from_str(r#"{"method":"acpo+data","weighting":"alpha-bar"}"#).unwrap();
        assert_eq!(cfg.method, Method::AcpoData);
        assert_eq!(cfg.weighting, Weighting::AlphaBar);
        assert_eq!(cfg.t_max, 600);
        let err = serde_json::from_str::<ObjectiveConfig>(r#"{"lamda_a":1}"#).unwrap_err();
        assert!(err.to_string().contains("lamda_a"), "{err}");
        let bad = ObjectiveConfig {
            t_max: 1000,
            ..Default::default()
        };
        assert!(bad.validate(1000).is_err());
        assert!(ObjectiveConfig::default().validate(1000).is_ok());
    }

    #[test]
    fn x0_hat_inverts_add_noise() {
        let dev = Device::Cpu;
        let s = Schedule::linear(1000, 1e-4, 0.02).unwrap();
        let x0 = Tensor::new(&[[[[0.5f32, -0.25]]], [[[0.1, 0.9]]]], &dev).unwrap();
        let eps = Tensor::new(&[[[[1.0f32, -2.0]]], [[[0.3, 0.7]]]], &dev).unwrap();
        let t = [10, 500];
        let xt = s.add_noise(&x0, &eps, &t).unwrap();
        let back = s.x0_hat(&xt, &eps, &t, false).unwrap();
        let diff = (back - &x0).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        assert!(Schedule::from_alpha_bar(vec![0.5, 0.9]).is_err());
        assert!(s.add_noise(&x0, &eps, &[0, 1000]).is_err());
    }

    /// Two draws at t = 100 whose x0_hat is the constant 0.2 and -0.4, true noise 2 everywhere.
    fn calibration_batch(s: &Schedule) -> ObjectiveBatch {
        let dev = Device::Cpu;
        let a = s.alpha_bar(100).sqrt() as f32;
        let x_t = Tensor::from_vec(vec![0.2 * a; 4], (1, 1, 2, 2), &dev).unwrap();
        let x_t2 = Tensor::from_vec(vec![-0.4 * a; 4], (1, 1, 2, 2), &dev).unwrap();
        ObjectiveBatch {
            x_t: Tensor::cat(&[x_t, x_t2], 0).unwrap(),
            t: vec![100, 100],
            eps: Some(Tensor::full(2f32, (2, 1, 2, 2), &dev).unwrap()),
            cond: None,
        }
    }

    #[test]
    fn calibration_measures_the_base_by_hand() {
        let s = Schedule::linear(1000, 1e-4, 0.02).unwrap();
        // The base predicts zero noise, so x0_hat = x_t / sqrt(ab) and its error is the noise.
        let base = |x: &Tensor, _t: &Tensor, _c: Option<&Tensor>| x.zeros_like();
        // Q = mean pixel in [0, 1]: (0.2 + 1) / 2 = 0.6 and (-0.4 + 1) / 2 = 0.3.
        let q = |img: &Tensor| img.flatten_from(1)?.mean(1);
        let c = Calibration::measure(&base, &q, &s, &[calibration_batch(&s)]).unwrap();
        assert_eq!(c.draws, 2);
        assert!((c.q_mean - 0.45).abs() < 1e-6, "{c:?}");
        // Sample std of {0.6, 0.3}: sqrt((0.15^2 + 0.15^2) / 1).
        assert!((c.q_std - 0.045f64.sqrt()).abs() < 1e-6, "{c:?}");
        assert!((c.eps_mse - 4.0).abs() < 1e-6, "{c:?}");
        let cfg = ObjectiveConfig::default().calibrated(&c);
        assert_eq!(
            (cfg.q_offset, cfg.q_scale, cfg.eps_scale),
            (c.q_mean, c.q_std, 4.0)
        );
        // Identical scores cannot be a unit.
        let flat = |img: &Tensor| img.flatten_from(1)?.mean(1)?.zeros_like();
        assert!(Calibration::measure(&base, &flat, &s, &[calibration_batch(&s)]).is_err());
    }

    #[test]
    fn the_anchor_and_data_terms_are_in_units_of_eps_scale() {
        let s = Schedule::linear(1000, 1e-4, 0.02).unwrap();
        let model = |x: &Tensor, _t: &Tensor, _c: Option<&Tensor>| x.ones_like();
        let reference = |x: &Tensor, _t: &Tensor, _c: Option<&Tensor>| x.zeros_like();
        let q = |img: &Tensor| img.flatten_from(1)?.mean(1);
        let cfg = ObjectiveConfig {
            method: Method::AcpoData,
            lambda_p: 0.0,
            lambda_a: 3.0,
            lambda_d: 2.0,
            eps_scale: 0.5,
            ..Default::default()
        };
        let out = acpo_loss(&model, &reference, &q, &s, &cfg, &calibration_batch(&s)).unwrap();
        // anchor distance (1 - 0)^2 = 1, data MSE (2 - 1)^2 = 1, each divided by 0.5.
        assert_eq!((out.anchor, out.simple), (Some(1.0), Some(1.0)));
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!((loss - (3.0 * 2.0 + 2.0 * 2.0)).abs() < 1e-5, "{loss}");
        let bad = ObjectiveConfig {
            eps_scale: 0.0,
            ..Default::default()
        };
        assert!(bad
            .validate(1000)
            .unwrap_err()
            .to_string()
            .contains("eps_scale"));
    }
}
