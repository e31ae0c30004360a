//! Point estimates with their sample count and 95% interval.
//!
//! Which interval each metric uses (recorded in [`Estimate::interval`]):
//! - `t`: Student-t interval of a mean, `mean ± t_{0.975, n-1} · sd / sqrt(n)`; used for
//!   per-sample scores, per-draw MSEs, per-seed paired differences.
//! - `wilson`: Wilson score interval of a proportion (win rates).
//! - `bootstrap`: percentile interval of a seeded paired bootstrap over seeds (relative
//!   improvement, a ratio of means) or over samples (FID).
//! - `subset-sd`: KID's mean over random subsets ± 1.96 · its standard deviation over subsets.
//! - `exact`: a quantity that is zero by construction (the base model against itself).

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A value with its sample count and 95% interval (`lo`/`hi` are `None` when it cannot be
/// computed, e.g. from one sample; `note` then says why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Estimate {
    pub mean: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub n: usize,
    /// `t`, `wilson`, `bootstrap`, `subset-sd` or `exact`.
    pub interval: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Estimate {
    /// Half-width of the interval when it is symmetric enough to print as `± h`.
    pub fn half_width(&self) -> Option<f64> {
        Some((self.hi? - self.lo?) / 2.0)
    }

    /// An exact value (no sampling error).
    pub fn exact(value: f64, n: usize) -> Self {
        Estimate {
            mean: value,
            lo: Some(value),
            hi: Some(value),
            n,
            interval: "exact".into(),
            note: None,
        }
    }
}

/// Two-sided 97.5% quantile of Student's t with `df` degrees of freedom.
///
/// Hand-written (a table and the Cornish-Fisher expansion) rather than a statistics crate: it
/// is the only quantile needed. Exact table values for df <= 30; beyond, the expansion in
/// `1/df` is accurate to better than 1e-4.
pub fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
        2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
        2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
        2.048407, 2.045230, 2.042272,
    ];
    if df == 0 {
        return f64::NAN;
    }
    if df <= 30 {
        return TABLE[df - 1];
    }
    let z: f64 = 1.959963984540054;
    let n = df as f64;
    let g1 = (z.powi(3) + z) / 4.0;
    let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
    let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
    z + g1 / n + g2 / (n * n) + g3 / (n * n * n)
}

/// Mean and sample standard deviation.
pub fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let m = x.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (m, f64::NAN);
    }
    let v = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64;
    (m, v.sqrt())
}

/// Mean with its Student-t 95% interval.
pub fn mean_t(x: &[f64]) -> Estimate {
    let n = x.len();
    let (m, sd) = mean_sd(x);
    if n < 2 {
        return Estimate {
            mean: m,
            lo: None,
            hi: None,
            n,
            interval: "t".into(),
            note: Some(format!("no interval from {n} sample(s)")),
        };
    }
    let h = t975(n - 1) * sd / (n as f64).sqrt();
    Estimate {
        mean: m,
        lo: Some(m - h),
        hi: Some(m + h),
        n,
        interval: "t".into(),
        note: None,
    }
}

/// Proportion `wins / n` in percent with the Wilson score 95% interval.
pub fn wilson_pct(wins: usize, n: usize) -> Estimate {
    if n == 0 {
        return Estimate {
            mean: f64::NAN,
            lo: None,
            hi: None,
            n,
            interval: "wilson".into(),
            note: Some("no samples".into()),
        };
    }
    let z: f64 = 1.959963984540054;
    let nf = n as f64;
    let p = wins as f64 / nf;
    let denom = 1.0 + z * z / nf;
    let centre = (p + z * z / (2.0 * nf)) / denom;
    let h = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / denom;
    Estimate {
        mean: 100.0 * p,
        lo: Some(100.0 * (centre - h).max(0.0)),
        hi: Some(100.0 * (centre + h).min(1.0)),
        n,
        interval: "wilson".into(),
        note: None,
    }
}

/// Percentile interval of `stat` over `reps` seeded bootstrap resamples of the indices
/// `0..n` (the same resampled indices feed both members of a pair, so it is paired).
pub fn bootstrap(
    n: usize,
    reps: usize,
    seed: u64,
    point: f64,
    mut stat: impl FnMut(&[usize]) -> f64,
) -> Estimate {
    if n < 2 || reps < 20 {
        return Estimate {
            mean: point,
            lo: None,
            hi: None,
            n,
            interval: "bootstrap".into(),
            note: Some(format!(
                "no interval ({n} samples, {reps} resamples; needs >= 2 and >= 20)"
            )),
        };
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut vals: Vec<f64> = Vec::with_capacity(reps);
    for _ in 0..reps {
        for v in idx.iter_mut() {
            *v = rng.random_range(0..n);
        }
        let s = stat(&idx);
        if s.is_finite() {
            vals.push(s);
        }
    }
    if vals.len() < 20 {
        return Estimate {
            mean: point,
            lo: None,
            hi: None,
            n,
            interval: "bootstrap".into(),
            note: Some("too few finite bootstrap resamples".into()),
        };
    }
    vals.sort_by(f64::total_cmp);
    let q = |p: f64| {
        // Linear interpolation between order statistics (type 7, as numpy's default).
        let h = p * (vals.len() - 1) as f64;
        let lo = h.floor() as usize;
        let hi = h.ceil() as usize;
        vals[lo] + (h - lo as f64) * (vals[hi] - vals[lo])
    };
    Estimate {
        mean: point,
        lo: Some(q(0.025)),
        hi: Some(q(0.975)),
        n,
        interval: "bootstrap".into(),
        note: Some(format!("{} resamples, percentile", vals.len())),
    }
}

/// Improvement of `tuned` over `base` on the same seeds, oriented so that positive = better.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Improvement {
    /// `100 · (mean(tuned) - mean(base)) / |mean(base)|`, sign flipped when lower is better;
    /// paired bootstrap interval over seeds.
    pub relative_pct: Estimate,
    /// Mean per-seed difference `tuned - base` (sign flipped when lower is better); t-interval.
    pub absolute: Estimate,
    /// Percent of seeds where the tuned model scores strictly better; Wilson interval.
    pub win_rate_pct: Estimate,
}

/// Paired improvement statistics; `higher_is_better` orients the signs.
pub fn improvement(
    base: &[f64],
    tuned: &[f64],
    higher_is_better: bool,
    reps: usize,
    seed: u64,
) -> Improvement {
    assert_eq!(base.len(), tuned.len(), "paired samples");
    let sign = if higher_is_better { 1.0 } else { -1.0 };
    let n = base.len();
    let diffs: Vec<f64> = base
        .iter()
        .zip(tuned)
        .map(|(b, t)| sign * (t - b))
        .collect();
    let wins = diffs.iter().filter(|d| **d > 0.0).count();
    let rel = |ix: &[usize]| {
        let mb = ix.iter().map(|&i| base[i]).sum::<f64>() / ix.len() as f64;
        let mt = ix.iter().map(|&i| tuned[i]).sum::<f64>() / ix.len() as f64;
        100.0 * sign * (mt - mb) / mb.abs()
    };
    let all: Vec<usize> = (0..n).collect();
    let point = rel(&all);
    Improvement {
        relative_pct: bootstrap(n, reps, seed, point, rel),
        absolute: mean_t(&diffs),
        win_rate_pct: wilson_pct(wins, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_tables() {
        assert!((t975(1) - 12.7062).abs() < 1e-3);
        assert!((t975(30) - 2.0423).abs() < 1e-3);
        // Reference values of the t distribution.
        assert!((t975(40) - 2.021075).abs() < 2e-4, "{}", t975(40));
        assert!((t975(60) - 2.000298).abs() < 1e-4);
        assert!((t975(120) - 1.979930).abs() < 1e-4);
        assert!((t975(100000) - 1.95998).abs() < 1e-4);
    }

    #[test]
    fn mean_t_interval() {
        let e = mean_t(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(e.mean, 2.5);
        // sd = 1.29099, t(3) = 3.182446, h = 3.182446 * 1.29099 / 2
        let h = 3.182446 * 1.2909944 / 2.0;
        assert!((e.hi.unwrap() - (2.5 + h)).abs() < 1e-5);
        assert_eq!(e.n, 4);
        let one = mean_t(&[5.0]);
        assert!(one.lo.is_none() && one.note.is_some());
    }

    #[test]
    fn wilson_interval_known_value() {
        // 8 of 10: Wilson 95% = [0.4902, 0.9433].
        let e = wilson_pct(8, 10);
        assert!((e.lo.unwrap() - 49.02).abs() < 0.05, "{e:?}");
        assert!((e.hi.unwrap() - 94.33).abs() < 0.05, "{e:?}");
        let all = wilson_pct(10, 10);
        assert!(all.hi.unwrap() <= 100.0 && all.mean == 100.0);
    }

    #[test]
    fn improvement_orients_by_direction() {
        let base = [10.0, 12.0, 11.0, 9.0, 10.0, 13.0, 12.0, 11.0];
        let better_low: Vec<f64> = base.iter().map(|b| b - 1.0).collect();
        let imp = improvement(&base, &better_low, false, 500, 1);
        assert!((imp.absolute.mean - 1.0).abs() < 1e-12);
        assert_eq!(imp.win_rate_pct.mean, 100.0);
        let rel = 100.0 * 1.0 / 11.0;
        assert!((imp.relative_pct.mean - rel).abs() < 1e-9);
        let (lo, hi) = (imp.relative_pct.lo.unwrap(), imp.relative_pct.hi.unwrap());
        assert!(lo <= rel && rel <= hi && lo > 0.0, "{lo} {hi}");
        let worse = improvement(&base, &better_low, true, 500, 1);
        assert_eq!(worse.win_rate_pct.mean, 0.0);
        assert!(worse.absolute.mean < 0.0);
    }

    #[test]
    fn bootstrap_is_seeded() {
        let x: Vec<f64> = (0..50).map(|i| (i * 7 % 13) as f64).collect();
        let f = |ix: &[usize]| ix.iter().map(|&i| x[i]).sum::<f64>() / ix.len() as f64;
        let a = bootstrap(50, 200, 3, 0.0, f);
        let b = bootstrap(50, 200, 3, 0.0, f);
        assert_eq!(a, b);
        assert!(bootstrap(50, 5, 3, 0.0, f).lo.is_none());
    }
}
