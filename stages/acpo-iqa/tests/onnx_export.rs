//! CNNIQA exported to ONNX from Rust and run with ONNX Runtime agrees with the candle model
//! within 1e-4 on real images (calibration crops and CIFAR-10-sized images).

mod common;

use acpo_iqa::imageio::images_to_tensor;
use acpo_iqa::onnx::{export_cnniqa, init_ort, OnnxModel};
use acpo_iqa::{Cnniqa, PatchMode, RgbImage};
use candle_core::Device;

fn crops(size: usize, count: usize) -> Vec<RgbImage> {
    let mut out = Vec::new();
    let dir = common::mirror().join("iqa/calibration");
    'outer: for sub in ["dist_dir", "ref_dir"] {
        for name in common::CALIB {
            let img = RgbImage::load(dir.join(format!("{sub}/{name}.bmp"))).unwrap();
            let (y0, x0) = (37 % (img.height - size), 101 % (img.width - size));
            let data: Vec<u8> = (0..size)
                .flat_map(|y| {
                    let row = (y0 + y) * img.width + x0;
                    img.data[row * 3..(row + size) * 3].to_vec()
                })
                .collect();
            out.push(RgbImage::new(size, size, data).unwrap());
            if out.len() == count {
                break 'outer;
            }
        }
    }
    out
}

#[test]
fn candle_and_ort_agree() {
    init_ort(Some(&common::ort_dylib())).unwrap();
    let model = Cnniqa::load(
        common::mirror().join("iqa/CNNIQA-LIVE.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (size, n) in [(32usize, 10usize), (64, 6), (96, 3)] {
        let path = dir.path().join(format!("cnniqa_{size}.onnx"));
        let info = export_cnniqa(&model, size, size, &path).unwrap();
        assert_eq!(info.patch_rows, size / 32);
        let ort = OnnxModel::load(&path, 1).unwrap();
        assert_eq!(ort.input_dims(), &[-1, 3, size as i64, size as i64]);
        let imgs = crops(size, n);
        let t = images_to_tensor(&imgs, &Device::Cpu).unwrap();
        let want: Vec<f32> = model
            .score(&t, PatchMode::Inclusive)
            .unwrap()
            .to_vec1()
            .unwrap();
        let data: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let got = ort.run(data, &[n, 3, size, size]).unwrap();
        assert_eq!(got.len(), n);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4,
                "{size}x{size}: ort {g} vs candle {w}"
            );
        }
        // scores must vary across real images (not a constant graph)
        let spread = want.iter().cloned().fold(f32::MIN, f32::max)
            - want.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > 1.0, "scores barely vary: {want:?}");
    }
}
