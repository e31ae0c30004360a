//! `acpo stage text ...` end to end on the real all-MiniLM-L6-v2 (`$ACPO_ASSETS/minilm`,
//! scripts/setup.sh): captions of a prepared dataset the test writes, a prompt file with empty
//! lines, and the bad inputs (templates, an all-empty file, a corrupt weight file) with exit 2.

mod common;

use std::path::{Path, PathBuf};

use common::run_stage_in;
use serde_json::json;

fn minilm() -> PathBuf {
    std::env::var_os("ACPO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/assets"))
        .join("minilm")
}

fn tensor_shapes(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut shapes = serde_json::Map::new();
    for (k, v) in header.as_object().unwrap() {
        shapes.insert(k.clone(), v["shape"].clone());
    }
    shapes.into()
}

fn params(templates: &[&str]) -> serde_json::Value {
    json!({ "text": { "captions": { "templates": templates, "batch": 4 } } })
}

#[test]
fn captions_of_a_prepared_dataset_every_template_with_every_class() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data/prepared/toy");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("manifest.json"),
        json!({ "dataset": "toy", "classes": ["cat", "sea_turtle", "truck"] }).to_string(),
    )
    .unwrap();
    let model = minilm();
    let model = model.to_str().unwrap();
    let run = |p: &serde_json::Value| {
        run_stage_in(
            d.path(),
            p,
            "embed-captions@toy",
            &["text", "captions", "toy", "--model", model],
        )
    };
    let p = params(&["a photo of a {}", "a {}"]);
    let (code, err) = run(&p);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("6 captions (3 classes x 2 templates)"),
        "{err}"
    );
    let out = data.with_file_name("toy-captions");
    let captions: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("captions.json")).unwrap()).unwrap();
    assert_eq!(captions[3]["text"], "a sea turtle");
    assert_eq!(captions[3]["label"], 1);
    let shapes = tensor_shapes(&out.join("embeddings.safetensors"));
    // "a photo of a sea turtle" is the longest: [CLS] a photo of a sea turtle [SEP]
    assert_eq!(shapes["tokens"], json!([6, 8, 384]), "{shapes}");
    assert_eq!(shapes["pooled"], json!([6, 384]));
    assert_eq!(shapes["mask"], json!([6, 8]));
    let first = std::fs::read(out.join("embeddings.safetensors")).unwrap();

    // Same inputs, same bytes (the stage's output is content-hashed downstream).
    let (code, err) = run(&p);
    assert_eq!(code, Some(0), "{err}");
    assert!(first == std::fs::read(out.join("embeddings.safetensors")).unwrap());

    // A template without its slot: exit 2 naming the param; the output stays as it was.
    let (code, err) = run(&params(&["a photo of a {}", "a photo"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("text.captions.templates[1]"), "{err}");
    assert!(first == std::fs::read(out.join("embeddings.safetensors")).unwrap());
}

#[test]
fn prompt_files_drop_and_count_empty_lines_and_truncate_long_prompts() {
    let d = tempfile::tempdir().unwrap();
    let long = "a cat sitting on a mat ".repeat(60);
    std::fs::write(
        d.path().join("p.txt"),
        format!("a red car\n\n   \n{long}\na dog\n"),
    )
    .unwrap();
    let model = minilm();
    let args = |prompts: &str, out: &str| {
        vec![
            "text".to_string(),
            "embed".into(),
            "--prompts".into(),
            prompts.into(),
            "--out".into(),
            out.into(),
            "--model".into(),
            model.to_str().unwrap().into(),
        ]
    };
    let a = args("p.txt", "emb");
    let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    let (code, err) = run_stage_in(d.path(), &json!({}), "embed", &a);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("3 prompts (2 empty lines dropped, 1 truncated to 256 tokens)"),
        "{err}"
    );
    let prompts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("emb/prompts.json")).unwrap())
            .unwrap();
    assert_eq!(prompts["line"], json!([1, 4, 5]));
    let shapes = tensor_shapes(&d.path().join("emb/embeddings.safetensors"));
    assert_eq!(shapes["tokens"], json!([3, 256, 384]), "{shapes}");

    // Only empty lines: bad input, named.
    std::fs::write(d.path().join("empty.txt"), "\n \n").unwrap();
    let a = args("empty.txt", "emb2");
    let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    let (code, err) = run_stage_in(d.path(), &json!({}), "embed", &a);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("empty.txt: no prompts"), "{err}");
    assert!(!d.path().join("emb2").exists());
}

fn prompt_row(
    set: &str,
    split: &str,
    i: usize,
    prompt: &str,
    cat: &str,
) -> acpo_data::prompts::PromptRow {
    acpo_data::prompts::PromptRow {
        set: set.into(),
        split: split.into(),
        id: i.to_string(),
        prompt: prompt.into(),
        category: cat.into(),
    }
}

#[test]
fn prompt_sets_are_seeded_subsets_cut_to_the_context_limit() {
    let d = tempfile::tempdir().unwrap();
    let table = d.path().join("data/prepared/prompts");
    std::fs::create_dir_all(&table).unwrap();
    let long =
        "a very detailed oil painting of a castle on a hill at sunset, trending on artstation";
    let mut rows: Vec<_> = (0..10)
        .map(|i| {
            prompt_row(
                "diffusiondb",
                "train",
                i,
                &format!("a photo of cat number {i}"),
                "",
            )
        })
        .collect();
    rows.push(prompt_row("diffusiondb", "train", 10, long, ""));
    rows.extend((0..4).map(|i| {
        let cat = if i < 3 { "Colors" } else { "Counting" };
        prompt_row("drawbench", "test", i, &format!("a blue bird {i}"), cat)
    }));
    acpo_data::prompts::write_parquet(&rows, &table.join("prompts.parquet")).unwrap();
    let model = minilm();
    let params = |sets: serde_json::Value| json!({ "text": { "prompts": { "max_tokens": 8, "batch": 4, "seed": 3, "sets": sets } } });
    let sets = json!({
        "train": { "set": "diffusiondb", "split": "train", "count": 0 },
        "drawbench": { "set": "drawbench", "split": "test", "count": 2 },
    });
    let run = |p: &serde_json::Value| {
        run_stage_in(
            d.path(),
            p,
            "embed-prompts",
            &["text", "prompts", "--model", model.to_str().unwrap()],
        )
    };
    let (code, err) = run(&params(sets.clone()));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(
            "prompts train: 11 of 11 diffusiondb/train prompts (0 empty skipped, 1 cut to 8 tokens"
        ),
        "{err}"
    );
    assert!(
        err.contains("prompts drawbench: 2 of 4 drawbench/test"),
        "{err}"
    );
    let out = d.path().join("data/prepared/prompt-embeddings");
    let train =
        acpo_text::PromptTable::load(&out.join("train"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(train.len(), 11);
    assert_eq!(train.tokens.dims(), &[11, 8, 384]);
    let cut = &train.records[10];
    assert!(
        cut.truncated && cut.tokens == 8 && cut.prompt == long,
        "{cut:?}"
    );
    let drawbench: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("drawbench/prompts.json")).unwrap())
            .unwrap();
    assert_eq!(drawbench.as_array().unwrap().len(), 2);
    assert!(drawbench[0]["category"] == "Colors" || drawbench[0]["category"] == "Counting");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["sets"]["train"]["embeddings"]["truncated"], 1);
    // The same params choose the same rows.
    let first = std::fs::read(out.join("drawbench/prompts.json")).unwrap();
    let (code, err) = run(&params(sets.clone()));
    assert_eq!(code, Some(0), "{err}");
    assert!(first == std::fs::read(out.join("drawbench/prompts.json")).unwrap());

    // A set and split the table does not have: exit 2 naming the param; nothing replaced.
    let (code, err) = run(&params(
        json!({ "x": { "set": "parti", "split": "test", "count": 1 } }),
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("text.prompts.sets.x") && err.contains("parti"),
        "{err}"
    );
    assert!(first == std::fs::read(out.join("drawbench/prompts.json")).unwrap());
}

#[test]
fn a_corrupt_weight_file_is_bad_input_naming_the_expected_checksum() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("minilm");
    std::fs::create_dir_all(bad.join("1_Pooling")).unwrap();
    for f in acpo_text::MINILM_FILES {
        if f.name == "model.safetensors" {
            std::fs::write(bad.join(f.name), b"not weights").unwrap();
        } else {
            std::fs::copy(minilm().join(f.name), bad.join(f.name)).unwrap();
        }
    }
    std::fs::write(d.path().join("p.txt"), "a cat\n").unwrap();
    let (code, err) = run_stage_in(
        d.path(),
        &json!({}),
        "embed",
        &[
            "text",
            "embed",
            "--prompts",
            "p.txt",
            "--out",
            "emb",
            "--model",
            "minilm",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("model.safetensors") && err.contains("expected 53aa51172d142c89"),
        "{err}"
    );
}
