//! CNNIQA against the reference scores of `CNNIQA-LIVE.md` section 5 (strict grid, 165 patches
//! per 512x384 image), and a finite-difference gradient check through the whole model.

mod common;

use acpo_iqa::{Cnniqa, GrayRounding, PatchMode, RgbImage};
use candle_core::{DType, Device, Tensor, Var};

/// (image, ref_dir round, ref_dir truncate, dist_dir round, dist_dir truncate)
const REFERENCE: [(&str, f64, f64, f64, f64); 5] = [
    ("I03", 11.497, 11.570, 78.478, 75.900),
    ("I04", 12.151, 12.162, 12.035, 11.975),
    ("I06", 14.910, 14.929, 14.828, 14.913),
    ("I08", 18.356, 18.264, 19.712, 19.632),
    ("I19", 20.467, 20.463, 85.587, 85.416),
];

fn load_model() -> Cnniqa {
    Cnniqa::load(
        common::mirror().join("iqa/CNNIQA-LIVE.safetensors"),
        &Device::Cpu,
    )
    .expect("load CNNIQA")
}

#[test]
fn reference_scores_match_to_1e3() {
    let model = load_model();
    let calib = common::mirror().join("iqa/calibration");
    let mut images = Vec::new();
    for (name, ..) in REFERENCE {
        images.push(RgbImage::load(calib.join(format!("ref_dir/{name}.bmp"))).unwrap());
    }
    for (name, ..) in REFERENCE {
        images.push(RgbImage::load(calib.join(format!("dist_dir/{name}.bmp"))).unwrap());
    }
    for rounding in [GrayRounding::Round, GrayRounding::Truncate] {
        let got = model
            .score_rgb8(&images, PatchMode::Strict, rounding)
            .unwrap();
        for (i, (name, rr, rt, dr, dt)) in REFERENCE.iter().enumerate() {
            let (want_ref, want_dist) = match rounding {
                GrayRounding::Round => (*rr, *dr),
                GrayRounding::Truncate => (*rt, *dt),
            };
            // The reference table has three decimals: agreement to 1e-3 means |diff| <= 5e-4
            // rounding + 1e-3 float32 slack.
            for (got, want, which) in [(got[i], want_ref, "ref"), (got[i + 5], want_dist, "dist")] {
                assert!(
                    (got - want).abs() <= 1.5e-3,
                    "{which}_dir/{name} {rounding:?}: got {got:.5}, reference {want}"
                );
            }
        }
    }
}

/// d(sum of scores)/d(image) by central differences against candle's backward, through the
/// whole model (continuous luma, LCN, conv, max/min pooling, MLP, patch mean), inclusive grid.
#[test]
fn gradient_matches_finite_differences() {
    let model = load_model();
    let img = RgbImage::load(common::mirror().join("iqa/calibration/dist_dir/I03.bmp")).unwrap();
    // Two 64x64 crops from a real image, as F64 to make central differences precise.
    let dev = Device::Cpu;
    let mut data = Vec::new();
    for (y0, x0) in [(100usize, 200usize), (250, 31)] {
        for c in 0..3 {
            for y in 0..64 {
                for x in 0..64 {
                    data.push(img.data[((y0 + y) * img.width + x0 + x) * 3 + c] as f64 / 255.0);
                }
            }
        }
    }
    let x = Tensor::from_vec(data.clone(), (2, 3, 64, 64), &dev).unwrap();
    let var = Var::from_tensor(&x).unwrap();
    let model64 = cast_model(&model, DType::F64);
    let loss = score_f64(&model64, var.as_tensor()).sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("gradient reaches the image");
    let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
    assert!(g.iter().all(|v| v.is_finite()));
    let nonzero = g.iter().filter(|v| v.abs() > 1e-9).count();
    assert!(
        nonzero > g.len() / 2,
        "gradient mostly zero: {nonzero}/{}",
        g.len()
    );

    // Central differences in float64. Max/min pooling and ReLU are piecewise linear: a step can
    // cross a kink (argmax switch), so a point that disagrees is retried with smaller steps; a
    // wrong gradient disagrees at every step size.
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    let mut retried = 0;
    for k in (0..data.len()).step_by(997).take(24) {
        let eval = |delta: f64| {
            let mut d = data.clone();
            d[k] += delta;
            let t = Tensor::from_vec(d, (2, 3, 64, 64), &dev).unwrap();
            score_f64(&model64, &t)
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let mut best = f64::INFINITY;
        for (i, eps) in [1e-4, 1e-6, 1e-7].into_iter().enumerate() {
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let rel = (fd - g[k]).abs() / (fd.abs().max(g[k].abs()).max(1e-3));
            eprintln!(
                "k {k} eps {eps:e}: fd {fd:.6e} analytic {:.6e} rel {rel:.2e}",
                g[k]
            );
            best = best.min(rel);
            if rel < 1e-4 {
                retried += usize::from(i > 0);
                break;
            }
        }
        worst = worst.max(best);
        checked += 1;
    }
    assert!(retried <= 3, "{retried} of 24 points needed smaller steps");
    assert_eq!(checked, 24);
    assert!(worst < 1e-4, "worst relative gradient error {worst}");
}

fn score_f64(model: &Cnniqa, x: &Tensor) -> Tensor {
    model.score(x, PatchMode::Inclusive).unwrap()
}

fn cast_model(model: &Cnniqa, dtype: DType) -> Cnniqa {
    model.to_dtype(dtype).unwrap()
}
