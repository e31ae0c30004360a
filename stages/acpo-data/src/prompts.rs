//! The prompt sets, unified into one table `prompts.parquet` with the columns
//! `set, split, id, prompt, category` (all strings; category empty when the source has none).
//!
//! | set | split | source |
//! |---|---|---|
//! | `partiprompts` | test | `prompts/PartiPrompts.tsv` |
//! | `drawbench` | test | `prompts/drawbench.csv` (starts with a UTF-8 BOM) |
//! | `diffusiondb` | train / test / benchmark | the ImageReward 10k ReFL, 466 test and 100 benchmark JSON files |
//! | `visual-genome` | train / val / test | FACTUAL region captions `train.csv`, `dev.csv`, `test.csv` |
//!
//! Training prompts never overlap held-out ones: every training row whose normalised text
//! (lower case, whitespace collapsed) equals a held-out prompt of any set is dropped, and
//! the overlap before and after is reported in the manifest.

use crate::error::{DataError, Result};
use crate::output::{SourceRecord, Staging};
use crate::sources::{read_verified, Locator, Sources};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

pub const PARTI: &str = "prompts/PartiPrompts.tsv";
pub const DRAWBENCH: &str = "prompts/drawbench.csv";
pub const DDB_TRAIN: &str = "prompts/diffusiondb-refl-10k.json";
pub const DDB_TEST: &str = "prompts/diffusiondb-test-466.json";
pub const DDB_BENCH: &str = "prompts/diffusiondb-benchmark-100.json";
pub const VG_TRAIN: &str = "prompts/visual-genome-captions/train.csv";
pub const VG_DEV: &str = "prompts/visual-genome-captions/dev.csv";
pub const VG_TEST: &str = "prompts/visual-genome-captions/test.csv";

/// Params `data.prompts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PromptsConfig {
    /// Drop training rows whose prompt also appears in a held-out split (default true).
    /// With false, an overlap is an error instead.
    pub drop_train_overlap: bool,
}

impl Default for PromptsConfig {
    fn default() -> Self {
        PromptsConfig {
            drop_train_overlap: true,
        }
    }
}

/// Writes `rows` as the table `prompts.parquet` (uncompressed) at `path`.
pub fn write_parquet(rows: &[PromptRow], path: &Path) -> Result<()> {
    let werr = |e: PolarsError| DataError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut df = to_dataframe(rows).map_err(werr)?;
    let f = std::fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    ParquetWriter::new(f)
        .with_compression(ParquetCompression::Uncompressed)
        .finish(&mut df)
        .map_err(werr)?;
    Ok(())
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptRow {
    pub set: String,
    pub split: String,
    pub id: String,
    pub prompt: String,
    pub category: String,
}

fn row_err(file: &Path, line: u64, message: impl Into<String>) -> DataError {
    DataError::Row {
        file: file.to_path_buf(),
        line,
        message: message.into(),
    }
}

fn utf8<'a>(bytes: &'a [u8], file: &Path) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64
            + 1;
        row_err(file, line, format!("not valid UTF-8: {e}"))
    })
}

fn check_prompt(file: &Path, line: u64, prompt: &str) -> Result<String> {
    let p = prompt.trim();
    if p.is_empty() {
        return Err(row_err(file, line, "empty prompt"));
    }
    Ok(p.to_string())
}

/// PartiPrompts: TSV with header `Prompt, Category, Challenge, Note` (no quoting: prompts
/// may contain `"`). Split `test`, id = the data row number (1-based).
pub fn parse_parti(bytes: &[u8], file: &Path) -> Result<Vec<PromptRow>> {
    let text = utf8(bytes, file)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines();
    let header = lines.next().ok_or_else(|| row_err(file, 1, "empty file"))?;
    let want = ["Prompt", "Category", "Challenge", "Note"];
    if header.split('\t').collect::<Vec<_>>() != want {
        return Err(row_err(
            file,
            1,
            format!(
                "header must be {:?} (tab-separated), found {header:?}",
                want
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let lno = i as u64 + 2;
        if line.trim().is_empty() {
            return Err(row_err(file, lno, "empty row"));
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 4 {
            return Err(row_err(
                file,
                lno,
                format!("expected 4 tab-separated fields, found {}", f.len()),
            ));
        }
        out.push(PromptRow {
            set: "partiprompts".into(),
            split: "test".into(),
            id: format!("{}", i + 1),
            prompt: check_prompt(file, lno, f[0])?,
            category: f[1].trim().to_string(),
        });
    }
    Ok(out)
}

/// Reads a CSV with the given header (a leading UTF-8 BOM is stripped) and returns the
/// records with their line numbers.
fn read_csv(bytes: &[u8], file: &Path, header: &[&str]) -> Result<Vec<(u64, csv::StringRecord)>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    utf8(bytes, file)?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let h = rdr
        .headers()
        .map_err(|e| row_err(file, 1, e.to_string()))?
        .clone();
    if h.iter().collect::<Vec<_>>() != header {
        return Err(row_err(
            file,
            1,
            format!(
                "header must be {header:?}, found {:?}",
                h.iter().collect::<Vec<_>>()
            ),
        ));
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            row_err(file, line, format!("malformed CSV row: {e}"))
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        out.push((line, rec));
    }
    Ok(out)
}

/// DrawBench: CSV `Prompt,Category`, starting with a UTF-8 BOM. Split `test`.
pub fn parse_drawbench(bytes: &[u8], file: &Path) -> Result<Vec<PromptRow>> {
    read_csv(bytes, file, &["Prompt", "Category"])?
        .into_iter()
        .enumerate()
        .map(|(i, (line, r))| {
            Ok(PromptRow {
                set: "drawbench".into(),
                split: "test".into(),
                id: format!("{}", i + 1),
                prompt: check_prompt(file, line, &r[0])?,
                category: r[1].trim().to_string(),
            })
        })
        .collect()
}

/// Visual Genome captions: CSV `image_id,region_id,caption,scene_graph`; id =
/// `<image>-<region>`. A few regions carry two captions upstream (6 in `train.csv`); the
/// second gets the id `<image>-<region>.2`, and so on.
pub fn parse_vg(bytes: &[u8], file: &Path, split: &str) -> Result<Vec<PromptRow>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    read_csv(
        bytes,
        file,
        &["image_id", "region_id", "caption", "scene_graph"],
    )?
    .into_iter()
    .map(|(line, r)| {
        if r[0].trim().is_empty() || r[1].trim().is_empty() {
            return Err(row_err(file, line, "empty image_id or region_id"));
        }
        let base = format!("{}-{}", r[0].trim(), r[1].trim());
        let k = seen.entry(base.clone()).or_default();
        *k += 1;
        let id = if *k == 1 { base } else { format!("{base}.{k}") };
        Ok(PromptRow {
            set: "visual-genome".into(),
            split: split.into(),
            id,
            prompt: check_prompt(file, line, &r[2])?,
            category: String::new(),
        })
    })
    .collect()
}

/// DiffusionDB JSON arrays: `{"text","image"}` (ReFL 10k, id = image) or `{"id","prompt",...}`.
pub fn parse_diffusiondb(bytes: &[u8], file: &Path, split: &str) -> Result<Vec<PromptRow>> {
    let text = utf8(bytes, file)?;
    let v: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(text).map_err(|e| {
            row_err(
                file,
                e.line() as u64,
                format!("expected a JSON array of objects: {e}"),
            )
        })?;
    // Line of each element's opening brace, for error messages (the arrays hold flat objects).
    let element_lines = element_start_lines(text);
    v.iter()
        .enumerate()
        .map(|(i, o)| {
            let line = element_lines.get(i).copied().unwrap_or(0);
            let (pk, ik) = if o.contains_key("text") {
                ("text", "image")
            } else {
                ("prompt", "id")
            };
            let get = |k: &str| -> Result<String> {
                match o.get(k) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                    _ => Err(row_err(
                        file,
                        line,
                        format!("element {i}: missing string field {k:?}"),
                    )),
                }
            };
            Ok(PromptRow {
                set: "diffusiondb".into(),
                split: split.into(),
                id: get(ik)?,
                prompt: check_prompt(file, line, &get(pk)?)
                    .map_err(|_| row_err(file, line, format!("element {i}: empty prompt")))?,
                category: String::new(),
            })
        })
        .collect()
}

/// 1-based line of every top-level array element's start (outside strings).
fn element_start_lines(text: &str) -> Vec<u64> {
    let (mut depth, mut in_str, mut esc, mut line) = (0i32, false, false, 1u64);
    let mut out = Vec::new();
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => {
                if depth == 1 {
                    out.push(line);
                }
                depth += 1;
            }
            '}' | ']' => depth -= 1,
            _ => {}
        }
    }
    out
}

/// Normalised prompt text for the overlap check.
pub fn normalise(p: &str) -> String {
    p.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Overlap report.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Overlap {
    /// Training rows whose prompt equals a held-out prompt, before dropping.
    pub train_rows_overlapping: usize,
    /// Distinct overlapping prompts.
    pub distinct_prompts: usize,
    /// `"<train set> vs <held-out set>/<split>"` -> distinct overlapping prompts.
    pub pairs: BTreeMap<String, usize>,
    /// Training rows dropped.
    pub dropped: usize,
    /// Overlap after dropping (must be 0).
    pub after: usize,
}

/// Finds (and with `drop`, removes) training rows that overlap held-out prompts.
pub fn remove_overlap(rows: &mut Vec<PromptRow>, drop: bool) -> Overlap {
    let mut held: HashMap<String, HashSet<String>> = HashMap::new();
    for r in rows.iter().filter(|r| r.split != "train") {
        held.entry(normalise(&r.prompt))
            .or_default()
            .insert(format!("{}/{}", r.set, r.split));
    }
    let mut rep = Overlap::default();
    let mut distinct: HashSet<String> = HashSet::new();
    let mut pair_sets: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.split == "train") {
        let n = normalise(&r.prompt);
        if let Some(where_) = held.get(&n) {
            rep.train_rows_overlapping += 1;
            distinct.insert(n.clone());
            for w in where_ {
                pair_sets
                    .entry(format!("{} vs {w}", r.set))
                    .or_default()
                    .insert(n.clone());
            }
        }
    }
    rep.distinct_prompts = distinct.len();
    rep.pairs = pair_sets.into_iter().map(|(k, v)| (k, v.len())).collect();
    if drop {
        let before = rows.len();
        rows.retain(|r| r.split != "train" || !held.contains_key(&normalise(&r.prompt)));
        rep.dropped = before - rows.len();
    }
    rep.after = rows
        .iter()
        .filter(|r| r.split == "train" && held.contains_key(&normalise(&r.prompt)))
        .count();
    rep
}

/// `manifest.json` of the prompts stage.
#[derive(Debug, Clone, Serialize)]
pub struct PromptsManifest {
    pub dataset: String,
    pub rows: usize,
    /// set -> split -> rows.
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// set -> category -> rows (sets with categories only).
    pub categories: BTreeMap<String, BTreeMap<String, usize>>,
    pub overlap: Overlap,
    pub sources: Vec<SourceRecord>,
}

/// Builds the polars table.
pub fn to_dataframe(rows: &[PromptRow]) -> PolarsResult<DataFrame> {
    let col = |name: &str, vals: Vec<&str>| Column::new(name.into(), vals);
    DataFrame::new(
        rows.len(),
        vec![
            col("set", rows.iter().map(|r| r.set.as_str()).collect()),
            col("split", rows.iter().map(|r| r.split.as_str()).collect()),
            col("id", rows.iter().map(|r| r.id.as_str()).collect()),
            col("prompt", rows.iter().map(|r| r.prompt.as_str()).collect()),
            col(
                "category",
                rows.iter().map(|r| r.category.as_str()).collect(),
            ),
        ],
    )
}

/// Reads `prompts.parquet` back into rows.
pub fn read_parquet(path: &Path) -> Result<Vec<PromptRow>> {
    let ferr = |m: String| DataError::Format {
        file: path.to_path_buf(),
        message: m,
    };
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let df = ParquetReader::new(f)
        .finish()
        .map_err(|e| ferr(e.to_string()))?;
    let get = |name: &str| -> Result<Vec<String>> {
        let c = df.column(name).map_err(|e| ferr(e.to_string()))?;
        let s = c.str().map_err(|e| ferr(format!("column {name}: {e}")))?;
        Ok(s.iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    };
    let (set, split, id, prompt, category) = (
        get("set")?,
        get("split")?,
        get("id")?,
        get("prompt")?,
        get("category")?,
    );
    Ok((0..df.height())
        .map(|i| PromptRow {
            set: set[i].clone(),
            split: split[i].clone(),
            id: id[i].clone(),
            prompt: prompt[i].clone(),
            category: category[i].clone(),
        })
        .collect())
}

/// Reads every prompt source (verifying checksums) into rows.
pub fn load_all(
    sources: &Sources,
    locator: &Locator,
) -> Result<(Vec<PromptRow>, Vec<SourceRecord>)> {
    type Parser = fn(&[u8], &Path) -> Result<Vec<PromptRow>>;
    let plan: [(&str, Parser); 8] = [
        (PARTI, parse_parti),
        (DRAWBENCH, parse_drawbench),
        (DDB_TRAIN, |b, f| parse_diffusiondb(b, f, "train")),
        (DDB_TEST, |b, f| parse_diffusiondb(b, f, "test")),
        (DDB_BENCH, |b, f| parse_diffusiondb(b, f, "benchmark")),
        (VG_TRAIN, |b, f| parse_vg(b, f, "train")),
        (VG_DEV, |b, f| parse_vg(b, f, "val")),
        (VG_TEST, |b, f| parse_vg(b, f, "test")),
    ];
    let mut rows = Vec::new();
    let mut recs = Vec::new();
    for (path, parse) in plan {
        let r = locator.resolve(sources, path)?;
        let bytes = read_verified(&r.file, &r.sha256)?;
        let got = parse(&bytes, &r.file)?;
        if got.is_empty() {
            return Err(DataError::Format {
                file: r.file.clone(),
                message: "no prompts".into(),
            });
        }
        recs.push(SourceRecord::new(&r, got.len()));
        rows.extend(got);
    }
    Ok((rows, recs))
}

/// Checks that (set, split, id) is unique.
fn check_unique_ids(rows: &[PromptRow]) -> Result<()> {
    let mut seen = HashSet::new();
    for r in rows {
        if !seen.insert((&r.set, &r.split, &r.id)) {
            return Err(DataError::Format {
                file: PathBuf::from(format!("{}/{}", r.set, r.split)),
                message: format!("duplicate id {}", r.id),
            });
        }
    }
    Ok(())
}

/// The `prepare prompts` stage: writes `<dest>/{prompts.parquet, manifest.json, config.json}`.
pub fn prepare(
    cfg: &PromptsConfig,
    sources: &Sources,
    locator: &Locator,
    dest: &Path,
) -> Result<PromptsManifest> {
    let (mut rows, recs) = load_all(sources, locator)?;
    check_unique_ids(&rows)?;
    let overlap = remove_overlap(&mut rows, cfg.drop_train_overlap);
    if overlap.after != 0 {
        return Err(DataError::Config(format!(
            "data.prompts: {} training rows repeat held-out prompts ({:?}); set drop_train_overlap: true",
            overlap.after, overlap.pairs
        )));
    }
    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut categories: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in &rows {
        *counts
            .entry(r.set.clone())
            .or_default()
            .entry(r.split.clone())
            .or_default() += 1;
        if !r.category.is_empty() {
            *categories
                .entry(r.set.clone())
                .or_default()
                .entry(r.category.clone())
                .or_default() += 1;
        }
    }
    let manifest = PromptsManifest {
        dataset: "prompts".into(),
        rows: rows.len(),
        counts,
        categories,
        overlap,
        sources: recs,
    };
    let staging = Staging::new(dest)?;
    write_parquet(&rows, &staging.path("prompts.parquet"))?;
    staging.write_json("manifest.json", &manifest)?;
    staging.write_json("config.json", cfg)?;
    staging.commit()?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parti_tsv_keeps_quotes_and_checks_fields() {
        let t = "Prompt\tCategory\tChallenge\tNote\nA \"quoted\" cat\tAnimals\tBasic\t\nbond\tAbstract\tBasic\tx\n";
        let r = parse_parti(t.as_bytes(), Path::new("P.tsv")).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].prompt, "A \"quoted\" cat");
        assert_eq!(
            (
                r[1].id.as_str(),
                r[1].category.as_str(),
                r[1].split.as_str()
            ),
            ("2", "Abstract", "test")
        );
        let bad = "Prompt\tCategory\tChallenge\tNote\nok\tA\tB\tC\nonly two\tfields\n";
        let e = parse_parti(bad.as_bytes(), Path::new("P.tsv"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("P.tsv:3:") && e.contains("4 tab-separated"),
            "{e}"
        );
        let empty = "Prompt\tCategory\tChallenge\tNote\n  \tA\tB\tC\n";
        let e = parse_parti(empty.as_bytes(), Path::new("P.tsv"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("P.tsv:2:") && e.contains("empty prompt"),
            "{e}"
        );
    }

    #[test]
    fn drawbench_csv_with_bom() {
        let t = "\u{feff}Prompt,Category\nA red car.,Colors\n\"A, with comma\",Text\n";
        let r = parse_drawbench(t.as_bytes(), Path::new("d.csv")).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].prompt, "A red car.");
        assert_eq!(r[1].prompt, "A, with comma");
        assert_eq!(r[1].category, "Text");
        // Without stripping, the BOM would break the header check; a wrong header is named.
        let e = parse_drawbench(b"Text,Category\nx,y\n", Path::new("d.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.csv:1:") && e.contains("header"), "{e}");
        let e = parse_drawbench(
            "\u{feff}Prompt,Category\nok,A\n,Colors\n".as_bytes(),
            Path::new("d.csv"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("d.csv:3:") && e.contains("empty prompt"),
            "{e}"
        );
        let e = parse_drawbench(
            b"Prompt,Category\nok,A\ntoo,many,fields\n",
            Path::new("d.csv"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("d.csv:3:") && e.contains("malformed"), "{e}");
    }

    #[test]
    fn visual_genome_and_diffusiondb() {
        let t =
            "image_id,region_id,caption,scene_graph\n1,2,a dog on grass,\"( dog , on , grass )\"\n";
        let t2 = format!("{t}1,2,a dog on the grass,g\n");
        let r = parse_vg(t2.as_bytes(), Path::new("train.csv"), "train").unwrap();
        assert_eq!(
            (r[0].id.as_str(), r[0].prompt.as_str()),
            ("1-2", "a dog on grass")
        );
        assert_eq!(r[1].id, "1-2.2");
        let j = "[\n  {\"text\": \"a cat\", \"image\": \"000001-0002\"},\n  {\"text\": \" \", \"image\": \"x\"}\n]";
        let e = parse_diffusiondb(j.as_bytes(), Path::new("refl.json"), "train")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("refl.json:3:") && e.contains("element 1") && e.contains("empty prompt"),
            "{e}"
        );
        let j = "[{\"id\": \"7\", \"prompt\": \"a {curly} \\\"q\\\" prompt\"},\n{\"id\": \"8\", \"prompt\": \"b\"}]";
        let r = parse_diffusiondb(j.as_bytes(), Path::new("b.json"), "benchmark").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].id.as_str(), r[0].prompt.as_str()),
            ("7", "a {curly} \"q\" prompt")
        );
        let e = parse_diffusiondb(b"[{\"id\": \"7\"}]", Path::new("b.json"), "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.json:1") && e.contains("\"prompt\""), "{e}");
        let e = parse_diffusiondb(b"[{\"id\": 1,}]", Path::new("b.json"), "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.json:1") && e.contains("JSON"), "{e}");
    }

    fn row(set: &str, split: &str, id: &str, prompt: &str) -> PromptRow {
        PromptRow {
            set: set.into(),
            split: split.into(),
            id: id.into(),
            prompt: prompt.into(),
            category: String::new(),
        }
    }

    #[test]
    fn training_rows_overlapping_held_out_prompts_are_dropped() {
        let mut rows = vec![
            row("diffusiondb", "train", "1", "A  Cat"),
            row("diffusiondb", "train", "2", "a dog"),
            row("diffusiondb", "test", "3", "a cat"),
            row("partiprompts", "test", "1", "A cat"),
        ];
        let rep = remove_overlap(&mut rows, true);
        assert_eq!(
            (
                rep.train_rows_overlapping,
                rep.distinct_prompts,
                rep.dropped,
                rep.after
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(rep.pairs.len(), 2, "{:?}", rep.pairs);
        assert_eq!(rows.len(), 3);
        let mut rows2 = vec![row("a", "train", "1", "x"), row("b", "val", "1", "X ")];
        assert_eq!(remove_overlap(&mut rows2, false).after, 1);
    }

    #[test]
    fn parquet_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            row("s", "train", "1", "héllo \"x\""),
            PromptRow {
                category: "C".into(),
                ..row("t", "test", "2", "b")
            },
        ];
        let p = dir.path().join("p.parquet");
        write_parquet(&rows, &p).unwrap();
        assert_eq!(read_parquet(&p).unwrap(), rows);
    }

    #[test]
    fn prepare_from_a_tiny_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let vg = |s: &str| {
            format!(
                "image_id,region_id,caption,scene_graph\n1,{s}1,caption {s},g\n2,{s}2,shared,g\n"
            )
        };
        let files: Vec<(&str, Vec<u8>)> = vec![
            (
                PARTI,
                b"Prompt\tCategory\tChallenge\tNote\nshared\tAnimals\tBasic\t\n".to_vec(),
            ),
            (
                DRAWBENCH,
                "\u{feff}Prompt,Category\nA red car.,Colors\n"
                    .as_bytes()
                    .to_vec(),
            ),
            (
                DDB_TRAIN,
                br#"[{"text": "t1", "image": "1"}, {"text": "A red car.", "image": "2"}]"#.to_vec(),
            ),
            (
                DDB_TEST,
                br#"[{"id": "a", "prompt": "p1", "generations": [], "ranking": []}]"#.to_vec(),
            ),
            (DDB_BENCH, br#"[{"id": "b", "prompt": "p2"}]"#.to_vec()),
            (VG_TRAIN, vg("t").into_bytes()),
            (VG_DEV, vg("d").into_bytes()),
            (
                VG_TEST,
                b"image_id,region_id,caption,scene_graph\n9,9,test cap,g\n".to_vec(),
            ),
        ];
        let (sources, locator) = crate::testutil::mirror(dir.path(), &files);
        let dest = dir.path().join("prompts");
        let m = prepare(&PromptsConfig::default(), &sources, &locator, &dest).unwrap();
        // Dropped: ddb train "A red car." (drawbench), vg train "shared" (parti + vg dev).
        assert_eq!(m.overlap.dropped, 2);
        assert_eq!(m.counts["diffusiondb"]["train"], 1);
        assert_eq!(m.counts["visual-genome"]["train"], 1);
        assert_eq!(m.counts["visual-genome"]["val"], 2);
        let rows = read_parquet(&dest.join("prompts.parquet")).unwrap();
        assert_eq!(rows.len(), m.rows);
        assert!(dest.join("manifest.json").is_file() && dest.join("config.json").is_file());
        let strict = PromptsConfig {
            drop_train_overlap: false,
        };
        let e = prepare(&strict, &sources, &locator, &dir.path().join("p2"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("overlap") || e.contains("repeat held-out"),
            "{e}"
        );
        assert!(!dir.path().join("p2").exists());
    }
}
