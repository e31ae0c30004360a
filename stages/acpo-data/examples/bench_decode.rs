//! Benchmark: decode every JPEG of a CIFAR-10 tar (default: the mirror's 50,000-image
//! train tar) into the NHWC buffer the cifar10 stage writes, on all cores (rayon), and print
//! images per second. Used by `scripts/bench/data.sh`.
//!
//! `cargo run --release -p acpo-data --example bench_decode -- [TAR] [REPEATS]`

use acpo_data::cifar::label_of_member;
use acpo_data::images::{decode_members, read_tar_members};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tar = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let mirror = std::env::var("ACPO_MIRROR").unwrap_or_else(|_| "../shared/data".into());
        PathBuf::from(mirror).join("cifar10/cifar10-jpeg-train.tar")
    });
    let repeats: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let t0 = Instant::now();
    let bytes = std::fs::read(&tar)?;
    let members = read_tar_members(&bytes[..], &tar)?;
    let read_s = t0.elapsed().as_secs_f64();
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let set = decode_members(&tar, &members, (32, 32), |m| {
            label_of_member(&tar, "train", m)
        })?;
        let s = t.elapsed().as_secs_f64();
        assert_eq!(set.len(), members.len());
        best = best.min(s);
    }
    let n = members.len();
    println!(
        "{{\"tool\": \"acpo-data (image/zune-jpeg + rayon)\", \"threads\": {}, \"images\": {n}, \
         \"tar_read_s\": {read_s:.3}, \"decode_s\": {best:.3}, \"images_per_s\": {:.0}}}",
        rayon::current_num_threads(),
        n as f64 / best
    );
    Ok(())
}
