//! BRISQUE and NIQE against `calibration_summary.csv` on the five distorted calibration images
//! (the CSV scores `dist_dir/` only).
//!
//! Tolerances (see the crate README section "Image-quality models"):
//! * NIQE: the port follows iqa-torch 1.2.1 (BasicSR's MATLAB-faithful NIQE) with the MATLAB
//!   pristine model, so it is compared with the **official MATLAB** row `niqe`. pyiqa's own port
//!   (`niqe(ours)`) differs from that row by up to 5.1 % (I19); pyiqa's test accepts 6e-2
//!   relative. We use the same: relative 6e-2 (plus 0.05 absolute for the near-3 values).
//! * BRISQUE: the model files are image-quality 1.2.7's own SVR and feature ranges (retrained on
//!   LIVE by that package; `rho` -155.845 and ranges differ from the LIVE release's -153.591), so
//!   no row of the CSV was produced with them. We compare with the official `brisque` row
//!   (LIVE's release, same training data and score scale) with an absolute tolerance of 8 points
//!   of the 0-100 scale, and require the ordering of the five images to match exactly.

mod common;

use acpo_iqa::{Brisque, Niqe, RgbImage};

fn dist_images() -> Vec<RgbImage> {
    let dir = common::mirror().join("iqa/calibration/dist_dir");
    common::CALIB
        .iter()
        .map(|n| RgbImage::load(dir.join(format!("{n}.bmp"))).unwrap())
        .collect()
}

fn order(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    idx
}

#[test]
fn niqe_matches_official_matlab_scores() {
    let niqe = Niqe::load(common::assets().join("niqe/niqe_pris_params.npz")).unwrap();
    let want = common::calibration_row("niqe");
    let got: Vec<f64> = dist_images()
        .iter()
        .map(|i| niqe.score(i).unwrap())
        .collect();
    eprintln!(
        "NIQE got {got:?}\n     official {want:?}\n     pyiqa {:?}",
        common::calibration_row("niqe(ours)")
    );
    for (i, name) in common::CALIB.iter().enumerate() {
        let tol = 0.06 * want[i].abs() + 0.05;
        assert!(
            (got[i] - want[i]).abs() <= tol,
            "NIQE {name}: got {:.4}, official {:.4} (tolerance {tol:.3})",
            got[i],
            want[i]
        );
    }
}

#[test]
fn brisque_matches_official_scores() {
    let b = Brisque::load_dir(common::assets().join("brisque")).unwrap();
    let want = common::calibration_row("brisque");
    let got: Vec<f64> = dist_images().iter().map(|i| b.score(i).unwrap()).collect();
    eprintln!(
        "BRISQUE got {got:?}\n        official {want:?}\n        pyiqa {:?}",
        common::calibration_row("brisque(ours)")
    );
    for (i, name) in common::CALIB.iter().enumerate() {
        assert!(
            (got[i] - want[i]).abs() <= 8.0,
            "BRISQUE {name}: got {:.4}, official {:.4} (tolerance 8)",
            got[i],
            want[i]
        );
    }
    assert_eq!(
        order(&got),
        order(&want),
        "BRISQUE ranks the five images differently"
    );
}
