//! Prepares every dataset from the real mirror (`ACPO_MIRROR`, default `../shared/data`
//! from the workspace root) and checks the counts stated in the mirror's README.
//! The mirror is present in CI; where it is absent (outside CI) these tests say so and pass.

use acpo_data::{anime, church, cifar, prompts, ImageSet, Locator, Sources};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The mirror and the project's sources, or None (outside CI) when the mirror is absent.
fn setup() -> Option<(Sources, Locator)> {
    let mirror = std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    if !mirror.join("SHA256SUMS").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the data mirror {} is missing in CI",
            mirror.display()
        );
        eprintln!("SKIPPED: no data mirror at {}", mirror.display());
        return None;
    }
    let sources = Sources::load(&root().join("data/sources.yaml")).expect("data/sources.yaml");
    let locator = Locator {
        mirror,
        cache: root().join(".cache/data"),
        allow_download: false,
    };
    Some((sources, locator))
}

fn n(m: &acpo_data::output::Manifest, split: &str) -> usize {
    m.splits[split].count
}

#[test]
fn sources_yaml_matches_the_mirror_sha256sums() {
    let Some((sources, locator)) = setup() else {
        return;
    };
    let sums = std::fs::read_to_string(locator.mirror.join("SHA256SUMS")).unwrap();
    let mut listed = 0;
    for line in sums.lines() {
        let (sha, path) = line.split_once("  ").unwrap();
        if path == "README.md" {
            continue;
        }
        let (_, _, f) = sources.file(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(f.sha256, sha, "{path}");
        let size = std::fs::metadata(locator.mirror.join(path)).unwrap().len();
        assert_eq!(f.bytes, size, "{path}");
        listed += 1;
    }
    assert_eq!(listed, 27);
}

#[test]
fn cifar10_from_the_mirror() {
    let Some((sources, locator)) = setup() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("cifar10");
    let cfg = cifar::Cifar10Config::default();
    let m = cifar::prepare(&cfg, &sources, &locator, &dest).unwrap();
    assert_eq!(m.details["format"], "jpeg");
    assert_eq!(m.details["raw_counts"]["train"], 50_000);
    assert_eq!(m.details["raw_counts"]["test"], 10_000);
    assert_eq!(
        (n(&m, "train"), n(&m, "val"), n(&m, "test")),
        (49_000, 1_000, 10_000)
    );
    for c in cifar::CLASSES {
        assert_eq!(m.splits["train"].per_class[c], 4_900, "{c}");
        assert_eq!(m.splits["val"].per_class[c], 100, "{c}");
        assert_eq!(m.splits["test"].per_class[c], 1_000, "{c}");
    }
    assert_eq!(m.image_size, [32, 32]);
    let test = ImageSet::read_safetensors(&dest.join("test.safetensors")).unwrap();
    assert_eq!((test.len(), test.height, test.width), (10_000, 32, 32));
    let mean = test.pixels.iter().map(|&p| p as f64).sum::<f64>() / test.pixels.len() as f64;
    assert!(
        (100.0..140.0).contains(&mean),
        "CIFAR-10 pixel mean is about 120, got {mean}"
    );
    assert!(dest.join("preview.png").is_file() && dest.join("config.json").is_file());
}

#[test]
fn anime64_from_the_mirror() {
    let Some((sources, locator)) = setup() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let cfg = anime::Anime64Config::default();
    let m = anime::prepare(&cfg, 64, &sources, &locator, &out.path().join("anime64")).unwrap();
    assert_eq!(m.details["raw_count"], 15_000);
    assert_eq!(m.sources[0].items, 15_000);
    assert_eq!(
        (n(&m, "train"), n(&m, "val"), n(&m, "test")),
        (13_500, 500, 1_000)
    );
    assert_eq!(m.image_size, [64, 64]);

    // anime32: the same faces in every split, each the 2x2 box average of its 64x64 face.
    let cfg32 = anime::Anime32Config::default();
    let m32 = anime::prepare(&cfg32, 32, &sources, &locator, &out.path().join("anime32")).unwrap();
    assert_eq!(m32.image_size, [32, 32]);
    assert_eq!(m32.splits, m.splits);
    for split in ["train", "val", "test"] {
        let a = acpo_data::load_split(out.path(), "anime64", split).unwrap();
        let b = acpo_data::load_split(out.path(), "anime32", split).unwrap();
        assert_eq!(b, a.box_average_2x2(), "{split}");
    }
}

#[test]
fn church256_standin_from_the_mirror() {
    let Some((sources, locator)) = setup() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let cfg = church::Church256Config::default();
    let m = church::prepare(&cfg, &sources, &locator, &out.path().join(church::NAME)).unwrap();
    assert_eq!(m.dataset, "church256-standin");
    assert_eq!(m.sources[0].items, 24);
    // 24 photos x 15 crops (5 x 3 origins at stride 128); 4 test and 2 val photos.
    assert_eq!(
        (n(&m, "train"), n(&m, "val"), n(&m, "test")),
        (18 * 15, 2 * 15, 4 * 15)
    );
    assert_eq!(m.image_size, [256, 256]);
}

#[test]
fn prompts_from_the_mirror() {
    let Some((sources, locator)) = setup() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("prompts");
    let m = prompts::prepare(
        &prompts::PromptsConfig::default(),
        &sources,
        &locator,
        &dest,
    )
    .unwrap();
    let read: std::collections::BTreeMap<&str, usize> = m
        .sources
        .iter()
        .map(|s| (s.path.as_str(), s.items))
        .collect();
    // Rows read per file: the README's counts.
    assert_eq!(read[prompts::PARTI], 1_632);
    assert_eq!(read[prompts::DRAWBENCH], 200);
    assert_eq!(read[prompts::DDB_TRAIN], 10_000);
    assert_eq!(read[prompts::DDB_TEST], 466);
    assert_eq!(read[prompts::DDB_BENCH], 100);
    assert_eq!(read[prompts::VG_TRAIN], 37_861);
    assert_eq!(read[prompts::VG_DEV], 1_000);
    assert_eq!(read[prompts::VG_TEST], 1_508);
    // Held-out splits are kept whole; overlapping training rows are dropped.
    assert_eq!(m.counts["partiprompts"]["test"], 1_632);
    assert_eq!(m.counts["drawbench"]["test"], 200);
    assert_eq!(m.counts["diffusiondb"]["test"], 466);
    assert_eq!(m.counts["diffusiondb"]["benchmark"], 100);
    assert_eq!(m.counts["visual-genome"]["val"], 1_000);
    assert_eq!(m.counts["visual-genome"]["test"], 1_508);
    let train = m.counts["diffusiondb"]["train"] + m.counts["visual-genome"]["train"];
    assert_eq!(train + m.overlap.dropped, 10_000 + 37_861);
    assert!(
        m.overlap.train_rows_overlapping > 0,
        "the real sets do overlap"
    );
    assert_eq!(m.overlap.after, 0);
    // Categories from the README.
    assert_eq!(m.categories["partiprompts"].len(), 12);
    assert_eq!(m.categories["partiprompts"]["Animals"], 314);
    assert_eq!(m.categories["partiprompts"]["Indoor Scenes"], 40);
    assert_eq!(m.categories["drawbench"].len(), 11);
    assert_eq!(m.categories["drawbench"]["Colors"], 25);
    assert_eq!(m.categories["drawbench"]["Reddit"], 38);
    let rows = prompts::read_parquet(&dest.join("prompts.parquet")).unwrap();
    assert_eq!(rows.len(), m.rows);
    assert!(!rows.iter().any(|r| r.prompt.starts_with('\u{feff}')));
    assert!(rows
        .iter()
        .any(|r| r.set == "drawbench" && r.prompt == "A red colored car."));
}
