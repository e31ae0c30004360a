//! Fuzzing of the engine's loader: params and pipeline files (the project's own, toy pipelines
//! with `foreach`, `matrix` and interpolation, a YAML alias bomb) mutated at seeded
//! random places with YAML- and interpolation-significant text, then loaded as `repro` loads
//! them. Every case must end, within a time bound, in a pipeline or a typed error with a
//! message; a panic, a hang or an empty message fails and prints the input.
//!
//! `just test` runs 1,500 cases (seconds); `just fuzz` more. `ACPO_FUZZ_CASES` and
//! `ACPO_FUZZ_SEED` set the count and the seed.

mod common;

use acpo_pipeline::{Params, Pipeline};
use common::Rng;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const TOY_PIPELINE: &str = r#"
stages:
  gen:
    foreach: ${sets}
    do:
      cmd: echo ${item} ${scale} > gen-${item}.txt
      deps: [in/${item}.txt]
      outs:
        - gen-${item}.txt
  grid:
    matrix:
      a: ${grid.a}
      b: [x, y]
    cmd: echo ${item.a} ${item.b} ${grid.x} > g-${item.a}-${item.b}.txt
    params: [grid]
    outs: [g-${item.a}-${item.b}.txt]
  join:
    cmd: cat gen-*.txt > all.txt
    deps: [gen-a.txt, gen-b.txt]
    outs: [all.txt]
    persist: true
    metrics: [m.json]
"#;

const TOY_PARAMS: &str = "sets: [a, b]\nscale: 2\ngrid:\n  a: [1, 2, 3]\n  x: 10\n  y: 20\n";

/// Nine levels of aliases, each doubling nine times: 9^9 nodes if expanded naively.
const ALIAS_BOMB: &str = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\ni: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";

/// Text a mutation inserts: YAML structure, interpolation, paths the engine must confine.
const TOKENS: &[&str] = &[
    "${",
    "}",
    "${item}",
    "${key}",
    "${sets}",
    "${grid.${item.b}}",
    "${${",
    "$${",
    "foreach: ",
    "matrix:\n      z: ${sets}\n",
    "do:\n",
    "\n  ",
    "\n    ",
    "- ",
    ": ",
    ", ",
    "[",
    "]",
    "{",
    "&x ",
    "*x",
    "<<: *x\n",
    "!!binary ",
    "!!int ",
    "~",
    "null",
    "true",
    "1e999",
    "-1",
    "outs: [../x]",
    "deps: [/etc/passwd]",
    ".git",
    ".acpo/",
    "..",
    "\t",
    "\u{0}",
    "é",
    "\u{feff}",
    "#",
    "'",
    "\"",
    "|\n",
    ">-\n",
    "---\n",
    "...\n",
    "? ",
    "%YAML 1.2\n",
    "persist: yes",
];

fn corpus() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    vec![
        (read("pipeline.yaml"), read("params.yaml")),
        (TOY_PIPELINE.into(), TOY_PARAMS.into()),
        (TOY_PIPELINE.into(), ALIAS_BOMB.to_string() + TOY_PARAMS),
        (
            format!("{ALIAS_BOMB}stages:\n  s:\n    cmd: echo ${{i}}\n"),
            TOY_PARAMS.into(),
        ),
    ]
}

/// One to four mutations: a byte replaced by a token, a token inserted, a range deleted or
/// duplicated. Cuts fall on character boundaries, so the result is text (the loader's own
/// UTF-8 check is tested on files, in the CLI tests).
fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut s = text.to_string();
    for _ in 0..1 + rng.below(4) {
        let at = |rng: &mut Rng, s: &str| {
            let mut i = rng.below(s.len() as u64 + 1) as usize;
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let i = at(rng, &s);
        let token = TOKENS[rng.below(TOKENS.len() as u64) as usize];
        match rng.below(4) {
            0 => {
                let end = s[i..].chars().next().map_or(i, |c| i + c.len_utf8());
                s.replace_range(i..end, token);
            }
            1 => s.insert_str(i, token),
            2 => {
                let j = at(rng, &s);
                let (a, b) = (i.min(j), i.max(j));
                let b = a + (b - a).min(40);
                let b = (b..=s.len()).find(|&k| s.is_char_boundary(k)).unwrap();
                s.replace_range(a..b, "");
            }
            _ => {
                let j = at(rng, &s);
                let (a, b) = (i.min(j), i.max(j));
                let b = (a + (b - a).min(200)..=s.len())
                    .find(|&k| s.is_char_boundary(k))
                    .unwrap();
                let piece = s[a..b].to_string();
                s.insert_str(b, &piece);
            }
        }
    }
    s
}

/// Loads params and pipeline as `repro` does; `Ok(stages)` or the error's message.
fn load(root: &Path, pipeline: &str, params: &str) -> Result<usize, String> {
    let values = acpo_pipeline::yaml::value_from_str(Path::new("params.yaml"), params)
        .map_err(|e| e.to_string())?;
    let values = if values.is_null() {
        serde_json::json!({})
    } else {
        values
    };
    let params = Params::from_value(values, "cpu");
    let file = root.join("pipeline.yaml");
    Pipeline::from_str_limited(root, &file, pipeline, &params, 2_000)
        .map(|p| p.stages.len())
        .map_err(|e| e.to_string())
}

#[test]
fn mutated_pipeline_and_params_files_load_or_fail_with_a_message() {
    common::default_locations();
    let cases = Rng::env_u64("ACPO_FUZZ_CASES", 1_500);
    let seed = Rng::env_u64("ACPO_FUZZ_SEED", 20261201);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = corpus();
    // The unmutated corpus loads (the alias bomb in params is refused or bounded, not fatal).
    for (p, q) in &corpus[..2] {
        load(&root, p, q).unwrap();
    }
    let mut rng = Rng(seed);
    let (mut ok, mut refused) = (0u64, 0u64);
    for n in 0..cases {
        let (p, q) = &corpus[rng.below(corpus.len() as u64) as usize];
        let (p, q) = match rng.below(3) {
            0 => (p.clone(), mutate(&mut rng, q)),
            1 => (mutate(&mut rng, p), q.clone()),
            _ => (mutate(&mut rng, p), mutate(&mut rng, q)),
        };
        let (tx, rx) = mpsc::channel();
        let (pc, qc, rootc) = (p.clone(), q.clone(), root.clone());
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| load(&rootc, &pc, &qc));
            let _ = tx.send(r);
        });
        let ctx = || format!("seed {seed}, case {n}\n--- pipeline ---\n{p}\n--- params ---\n{q}");
        match rx.recv_timeout(Duration::from_secs(10)) {
            Err(_) => panic!("the loader did not finish within 10 s: {}", ctx()),
            Ok(Err(_)) => panic!("the loader panicked: {}", ctx()),
            Ok(Ok(Ok(_))) => ok += 1,
            Ok(Ok(Err(message))) => {
                assert!(!message.trim().is_empty(), "an empty error: {}", ctx());
                refused += 1;
            }
        }
    }
    println!("fuzz: {cases} cases (seed {seed}): {ok} loaded, {refused} refused with a message");
}
