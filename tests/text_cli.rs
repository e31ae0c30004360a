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
