//! all-MiniLM-L6-v2 through candle-transformers against an independent float64 reference.
//!
//! The fixture `tests/fixtures/minilm_reference.json` was computed once by
//! `scripts/minilm_reference.py`: BERT re-implemented in NumPy float64 from the same
//! `model.safetensors`, tokenized by the Python `tokenizers` package with the truncation
//! sentence-transformers applies (256 tokens), then the package's documented pooling
//! (`modules.json`: mean over the attention mask, then L2 normalisation). Needs
//! `$ACPO_ASSETS/minilm` (scripts/setup.sh).

use acpo_core::BadInput;
use std::path::{Path, PathBuf};

use acpo_text::{PromptSet, TextEncoder, TextError, MINILM_FILES};
use candle_core::Device;
use serde::Deserialize;

fn model_dir() -> PathBuf {
    std::env::var_os("ACPO_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/assets"))
        .join("minilm")
}

#[derive(Deserialize)]
struct Fixture {
    max_seq_length: usize,
    sentences: Vec<Sentence>,
    pairs: Vec<Pair>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    input_ids: Vec<u32>,
    embedding: Vec<f64>,
    token_embeddings_first_row: Vec<f64>,
    token_embeddings_last_row: Vec<f64>,
    #[serde(default)]
    tokens_before_truncation: Option<usize>,
}

#[derive(Deserialize)]
struct Pair {
    a: String,
    b: String,
    cosine: f64,
}

fn fixture() -> Fixture {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn encoder() -> TextEncoder {
    TextEncoder::load(&model_dir(), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e} (run scripts/setup.sh)"))
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// f32 through six layers against f64: the reference's 7 significant digits and the f32
/// accumulation both stay well below 1e-4 per coordinate of a unit vector (measured:
/// 1.6e-7); a wrong GELU, LayerNorm epsilon or mask is off by 1e-3 or more.
const TOL_POOLED: f64 = 1e-4;
/// Token states are not normalised (magnitudes up to about 10): relative 1e-4.
const TOL_TOKENS: f64 = 1e-3;

#[test]
fn token_ids_and_embeddings_match_the_float64_reference() {
    let fx = fixture();
    let enc = encoder();
    assert_eq!(enc.max_tokens(), fx.max_seq_length);
    assert_eq!(enc.dim(), 384);
    for (i, s) in fx.sentences.iter().enumerate() {
        let t = enc.tokenize(i, &s.text).unwrap();
        assert_eq!(t.ids, s.input_ids, "token ids of {:?}", s.text);
        assert_eq!(
            t.truncated,
            s.tokens_before_truncation.is_some(),
            "{:?}",
            s.text
        );
    }
    // One padded batch: padding must not leak into the other prompts.
    let texts: Vec<&str> = fx.sentences.iter().map(|s| s.text.as_str()).collect();
    let out = enc.encode(&texts).unwrap();
    let pooled: Vec<Vec<f32>> = out.pooled.to_vec2().unwrap();
    let tokens: Vec<Vec<Vec<f32>>> = out.tokens.to_vec3().unwrap();
    let mask: Vec<Vec<f32>> = out.mask.to_vec2().unwrap();
    let mut worst = 0f64;
    for (i, s) in fx.sentences.iter().enumerate() {
        let d = max_abs_diff(&pooled[i], &s.embedding);
        worst = worst.max(d);
        assert!(d < TOL_POOLED, "{:?}: pooled differs by {d:e}", s.text);
        let n = s.input_ids.len();
        assert_eq!(out.lengths[i], n);
        let first = &tokens[i][0][..8];
        let last = &tokens[i][n - 1][..8];
        let scale = |r: &[f64]| r.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let d0 = max_abs_diff(first, &s.token_embeddings_first_row);
        let d1 = max_abs_diff(last, &s.token_embeddings_last_row);
        assert!(
            d0 < TOL_TOKENS * scale(&s.token_embeddings_first_row),
            "{d0:e}"
        );
        assert!(
            d1 < TOL_TOKENS * scale(&s.token_embeddings_last_row),
            "{d1:e}"
        );
        // padding positions: mask 0 and zero states
        for (j, row) in tokens[i].iter().enumerate() {
            assert_eq!(mask[i][j], if j < n { 1.0 } else { 0.0 });
            if j >= n {
                assert!(row.iter().all(|v| *v == 0.0));
            }
        }
    }
    eprintln!("largest pooled difference from the f64 reference: {worst:.2e}");
    // Alone (no padding) equals in the batch.
    let alone: Vec<Vec<f32>> = enc.encode(&[texts[2]]).unwrap().pooled.to_vec2().unwrap();
    let d = alone[0]
        .iter()
        .zip(&pooled[2])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-5, "batch vs alone: {d:e}");
}

#[test]
fn related_sentences_rank_above_unrelated_ones() {
    let fx = fixture();
    let enc = encoder();
    let texts: Vec<&str> = fx.sentences.iter().map(|s| s.text.as_str()).collect();
    let pooled: Vec<Vec<f32>> = enc.encode(&texts).unwrap().pooled.to_vec2().unwrap();
    let row = |t: &str| texts.iter().position(|x| *x == t).unwrap();
    let cos: Vec<f64> = fx
        .pairs
        .iter()
        .map(|p| cosine(&pooled[row(&p.a)], &pooled[row(&p.b)]))
        .collect();
    for (p, c) in fx.pairs.iter().zip(&cos) {
        assert!(
            (c - p.cosine).abs() < 1e-4,
            "{} / {}: {c} vs {}",
            p.a,
            p.b,
            p.cosine
        );
    }
    // The fixture lists (related, unrelated) pairs sharing their first sentence.
    for w in cos.chunks(2) {
        assert!(w[0] > w[1] + 0.1, "related {} vs unrelated {}", w[0], w[1]);
    }
}

#[test]
fn long_prompts_are_truncated_and_flagged_empty_ones_refused() {
    let enc = encoder();
    let long = "a cat sitting on a mat ".repeat(60);
    let out = enc.encode(&[long.as_str(), "a cat"]).unwrap();
    assert_eq!(out.lengths, vec![256, 4]);
    assert_eq!(out.truncated, vec![true, false]);
    assert_eq!(out.tokens.dims(), &[2, 256, 384]);

    let err = enc.encode(&["a cat", "  "]).unwrap_err();
    assert!(matches!(err, TextError::EmptyPrompt { index: 1 }), "{err}");
    assert!(err.is_bad_input());
    let set = PromptSet::new(&["a cat", "  ", "a dog"]);
    assert_eq!(set.empty, 1);
    assert_eq!(enc.encode(&set.prompts).unwrap().lengths.len(), 2);
}

#[test]
fn a_context_limit_cuts_long_prompts_keeping_sep_and_leaves_short_ones_alone() {
    let full = encoder();
    let short = "a photo of a frog";
    let reference = full.encode(&[short]).unwrap();
    let enc = encoder().with_max_tokens(8).unwrap();
    assert_eq!(enc.max_tokens(), 8);
    let long = "a cat sitting on a mat next to a dog in the sun";
    let out = enc.encode(&[long, short]).unwrap();
    assert_eq!(out.lengths, vec![8, reference.lengths[0]]);
    assert_eq!(out.truncated, vec![true, false]);
    // the cut prompt still ends with [SEP] (id 102), as the tokenizer's own truncation does
    let ids = enc.tokenize(0, long).unwrap().ids;
    assert_eq!((ids.len(), ids[0], ids[7]), (8, 101, 102));
    // a prompt within the limit encodes exactly as without it
    let same = enc.encode(&[short]).unwrap();
    let d = (same.pooled - reference.pooled)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    // a limit above the model's is the model's; one with no room for a token is refused
    assert_eq!(encoder().with_max_tokens(1000).unwrap().max_tokens(), 256);
    let err = encoder().with_max_tokens(2).err().unwrap();
    assert!(err.to_string().contains("max_tokens"), "{err}");
}

#[test]
fn missing_or_corrupt_files_are_refused_with_the_expected_checksum() {
    let src = model_dir();
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("1_Pooling")).unwrap();
    for f in MINILM_FILES {
        if f.name != "model.safetensors" {
            std::fs::copy(src.join(f.name), d.path().join(f.name)).unwrap();
        }
    }
    let weights = MINILM_FILES
        .iter()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    let err = TextEncoder::load(d.path(), &Device::Cpu).err().unwrap();
    let msg = err.to_string();
    assert!(
        matches!(err, TextError::Missing { .. })
            && msg.contains("model.safetensors")
            && msg.contains(weights.sha256),
        "{msg}"
    );
    // the first 1 MiB of the real file: a truncated download
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(d.path().join("model.safetensors"), &bytes[..1 << 20]).unwrap();
    let err = TextEncoder::load(d.path(), &Device::Cpu).err().unwrap();
    let msg = err.to_string();
    assert!(
        matches!(err, TextError::Checksum { .. })
            && msg.contains("model.safetensors")
            && msg.contains(&format!("expected {}", weights.sha256)),
        "{msg}"
    );
    // unverified loading of the truncated file still fails, naming it
    let err = TextEncoder::load_unverified(d.path(), &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
