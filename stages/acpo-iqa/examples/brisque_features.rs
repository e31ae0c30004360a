// dev: print BRISQUE features of the calibration images
fn main() {
    let b = acpo_iqa::Brisque::load_dir("/work/main/.cache/assets/brisque").unwrap();
    for n in ["I03", "I04", "I19"] {
        let img = acpo_iqa::RgbImage::load(format!(
            "/work/shared/data/iqa/calibration/dist_dir/{n}.bmp"
        ))
        .unwrap();
        let f = b.features(&img);
        println!(
            "{n} raw {:?}",
            f.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>()
        );
        println!("{n} score {}", b.predict(&f));
    }
}
