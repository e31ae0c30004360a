//! `reports/index.html`: one self-contained page (images beside it, relative links), with
//! provenance: stage keys, params, git revision, acpo version, per-stage wall time and peak
//! memory from `pipeline.lock`, and the data checksums from the prepared datasets' manifests.

use crate::error::Result;
use crate::experiment::{fmt_across_short, short, Headline};
use crate::paper::{paper_cells, PaperRow};
use crate::schema::EvalMetrics;
use crate::spec::ReportSpec;
use crate::tables::{rows_of, summary_cells, wide, Wide};
use std::collections::BTreeMap;
use std::fmt::Write;

/// What the report wrote, for the HTML page.
#[derive(Debug, Clone, Default)]
pub struct BenchOutputs {
    pub plots: Vec<(String, String)>,
    pub grids: Vec<(String, String)>,
    pub notes: Vec<String>,
    /// The sampler-steps table, when the benchmark has a study.
    pub steps: Option<Wide>,
    /// The generated headline.
    pub headline: Option<Headline>,
    /// The headlines of `report.headline.also`, after it.
    pub also: Vec<Headline>,
    /// The methods table across seeds (header, cells).
    pub methods: (Vec<String>, Vec<Vec<String>>),
    /// The same, compact: what the page shows first.
    pub methods_compact: (Vec<String>, Vec<Vec<String>>),
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", esc(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>\n");
    s
}

const STYLE: &str = "body{font-family:DejaVu Sans,Arial,sans-serif;margin:2em auto;padding:0 1em;max-width:1200px;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #bbb;padding:3px 6px;vertical-align:top}\
th{background:#eee}td{white-space:nowrap}td:last-child{white-space:normal}img{max-width:100%;border:1px solid #ddd}\
table.compact td{white-space:normal}.grid img{image-rendering:pixelated}.strip img{height:min(116px,8.5vw);width:auto}\
.scroll{overflow-x:auto;max-width:100%}details{margin:0.5em 0 1em}summary{cursor:pointer;color:#0645ad}\
nav{font-size:14px}nav ul{display:inline;padding-left:0.5em}nav ul::before{content:'— '}nav ul li{display:inline}nav ul li:not(:last-child)::after{content:' · '}code{background:#f4f4f4}";

/// After load, the page records on `<body>` what the browser itself saw, so a headless
/// browser's `--dump-dom` shows it (the end-to-end tests read these attributes): how many
/// images failed to load, how many tables have no rows, which in-page links (`#id`) point at
/// no element, and which rendered tables are wider than the viewport (tables inside a closed
/// `<details>` are not rendered).
const SELF_CHECK: &str = "<script>window.addEventListener('load',function(){\
var b=Array.prototype.filter.call(document.images,function(i){return !(i.complete&&i.naturalWidth>0);});\
var t=Array.prototype.filter.call(document.querySelectorAll('table'),function(x){return x.querySelectorAll('tbody tr').length===0;});\
var l=Array.prototype.filter.call(document.querySelectorAll('a[href^=\"#\"]'),function(a){return !document.getElementById(a.getAttribute('href').slice(1));});\
var vw=document.documentElement.clientWidth;\
var w=Array.prototype.filter.call(document.querySelectorAll('table'),function(x){return !x.closest('details:not([open])')&&x.getBoundingClientRect().width>vw;});\
document.body.setAttribute('data-images',document.images.length);\
document.body.setAttribute('data-broken-images',b.length);\
document.body.setAttribute('data-broken-list',b.map(function(i){return i.getAttribute('src');}).join(' '));\
document.body.setAttribute('data-tables',document.querySelectorAll('table').length);\
document.body.setAttribute('data-empty-tables',t.length);\
document.body.setAttribute('data-toc-links',document.querySelectorAll('nav a[href^=\"#\"]').length);\
document.body.setAttribute('data-broken-links',l.map(function(a){return a.getAttribute('href');}).join(' '));\
document.body.setAttribute('data-viewport',vw);\
document.body.setAttribute('data-wide-tables',w.map(function(x){return (x.id||x.className||'table')+':'+Math.round(x.getBoundingClientRect().width);}).join(' '));\
document.body.setAttribute('data-checked','1');});</script>\n";

/// A table that wraps its cells to fit the page.
fn compact_table(header: &[String], rows: &[Vec<String>]) -> String {
    table(header, rows).replacen("<table>", "<table class=\"compact\">", 1)
}

/// `inner` behind a closed `<details>` with `summary`, scrolling sideways when wider than the
/// page.
fn details(summary: &str, inner: &str) -> String {
    format!(
        "<details><summary>{}</summary><div class=\"scroll\">{inner}</div></details>\n",
        esc(summary)
    )
}

/// A heading of the page: (id, title).
type Heading = (String, String);

/// The page's sections, in order, for its table of contents: each `<h2>` with its `<h3>`s.
#[derive(Default)]
struct Toc(Vec<(Heading, Vec<Heading>)>);

impl Toc {
    /// An `<h2>` with its id, added to the contents.
    fn h2(&mut self, id: &str, title: &str) -> String {
        self.0.push(((id.into(), title.into()), vec![]));
        format!("<h2 id=\"{}\">{}</h2>\n", esc(id), esc(title))
    }

    /// An `<h3>` with its id, added under the last `<h2>`.
    fn h3(&mut self, id: &str, title: &str) -> String {
        if let Some(last) = self.0.last_mut() {
            last.1.push((id.into(), title.into()));
        }
        format!("<h3 id=\"{}\">{}</h3>\n", esc(id), esc(title))
    }

    fn html(&self) -> String {
        let mut h = String::from("<nav id=\"contents\"><h2>Contents</h2><ol>");
        for ((id, title), subs) in &self.0 {
            let _ = write!(h, "<li><a href=\"#{}\">{}</a>", esc(id), esc(title));
            if !subs.is_empty() {
                h.push_str("<ul>");
                for (id, title) in subs {
                    let _ = write!(h, "<li><a href=\"#{}\">{}</a></li>", esc(id), esc(title));
                }
                h.push_str("</ul>");
            }
            h.push_str("</li>");
        }
        h.push_str("</ol></nav>\n");
        h
    }
}

/// Builds the page: the answer first (headline, base models), then the paper comparison, each
/// benchmark (compact table, samples side by side, plots, then the full tables folded), the
/// text-to-image report when it exists, and provenance last; a table of contents on top.
pub fn index_html(
    spec: &ReportSpec,
    bases: &[crate::base::BaseSummary],
    evals: &BTreeMap<String, Vec<EvalMetrics>>,
    paper: &[PaperRow],
    outs: &BTreeMap<String, BenchOutputs>,
) -> Result<String> {
    let mut toc = Toc::default();
    let mut body = String::new();
    body.push_str(&headline_section(&mut toc, outs));
    body.push_str(&base_section(&mut toc, bases));
    body.push_str(&study_links(&mut toc, &spec.out_dir));
    body.push_str(&toc.h2("paper", "Our numbers beside the paper's"));
    let (ph, pr) = paper_cells(paper);
    body.push_str(&compact_table(&ph, &pr));
    for (bm, list) in evals {
        let base = bases.iter().find(|b| &b.benchmark == bm);
        body.push_str(&benchmark_section(
            &mut toc,
            spec,
            bm,
            list,
            outs.get(bm),
            base,
        ));
    }
    body.push_str(&text_links(&mut toc, &spec.out_dir));
    body.push_str(&provenance(&mut toc, spec)?);

    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>acpo report</title><style>{STYLE}</style></head><body>\n\
         <h1>ACPO reproduction report</h1>\n<p>Profile <code>{}</code>, acpo {}, git revision <code>{}</code>. \
         Every number: mean [95% interval] n=sample count; intervals are t (means), bootstrap (relative improvement, FID), \
         wilson (win rates), u-statistic (diversity), subset-sd (KID), exact (zero by construction).</p>\n",
        esc(&spec.provenance.profile),
        esc(&spec.provenance.acpo_version),
        esc(&spec.provenance.git_revision)
    );
    h.push_str(&toc.html());
    h.push_str(&body);
    h.push_str(SELF_CHECK);
    h.push_str("</body></html>\n");
    Ok(h)
}

/// One benchmark: the compact methods table, samples side by side, plots, then the full
/// tables and every note once.
fn benchmark_section(
    toc: &mut Toc,
    spec: &ReportSpec,
    bm: &str,
    list: &[EvalMetrics],
    outs: Option<&BenchOutputs>,
    base: Option<&crate::base::BaseSummary>,
) -> String {
    let mut h = toc.h2(&format!("bm-{bm}"), &format!("Benchmark {bm}"));
    if let Some(o) = outs {
        h.push_str(&toc.h3(&format!("{bm}-methods"), "Methods across training seeds"));
        let _ = writeln!(
            h,
            "<p>{} Shown: mean [95% interval across seeds]; FID, KID and each run's own sampling interval are in the full table. \
             Tables: <a href=\"{1}/methods.csv\">methods.csv</a>, <a href=\"{1}/methods.md\">methods.md</a>; \
             by timestep: <a href=\"{1}/drift_by_t.md\">drift_by_t.md</a>.</p>",
            esc(crate::tables::METHODS_CAPTION),
            esc(bm)
        );
        h.push_str(&compact_table(&o.methods_compact.0, &o.methods_compact.1));
        h.push_str(&details(
            "Full methods table (FID, KID, sampling intervals)",
            &table(&o.methods.0, &o.methods.1),
        ));
        h.push_str(&toc.h3(&format!("{bm}-samples"), "Samples on the same seeds"));
        h.push_str(&samples_side_by_side(o, base));
        if !o.plots.is_empty() {
            h.push_str(&toc.h3(&format!("{bm}-plots"), "Plots"));
        }
        for (stem, caption) in &o.plots {
            let _ = writeln!(
                h,
                "<figure><img src=\"{0}.png\" alt=\"{1}\"><figcaption>{1} (<a href=\"{0}.svg\">SVG</a>)</figcaption></figure>",
                esc(stem),
                esc(caption)
            );
        }
    }
    h.push_str(&toc.h3(&format!("{bm}-runs"), "Every run"));
    let rows: Vec<_> = list.iter().flat_map(rows_of).collect();
    let (hd, cells) = summary_cells(&wide(&rows, &spec.optimised()));
    let _ = writeln!(
        h,
        "<p>Tables: <a href=\"{0}/summary.csv\">summary.csv</a>, <a href=\"{0}/summary.md\">summary.md</a>. \
         Samples per model: {1}, seeds {2}..{3}, {4} with {5} steps, {6} spacing (same seeds and noise for every model). \
         <code>cnniqa-onnx</code> is the guidance network itself through ONNX Runtime (on the image resized to 32x32): \
         a consistency check of the guidance, not an independent judge; BRISQUE and NIQE are the independent judges.</p>",
        esc(bm),
        list[0].sampling.samples,
        list[0].sampling.seed,
        list[0].sampling.seed + list[0].sampling.samples as u64 - 1,
        esc(&list[0].sampling.sampler),
        list[0].sampling.steps,
        esc(&list[0].sampling.spacing)
    );
    h.push_str(&details(
        &format!(
            "Every run and metric ({} rows, {} columns)",
            cells.len(),
            hd.len()
        ),
        &table(&hd, &cells),
    ));
    if let Some(w) = outs.and_then(|o| o.steps.as_ref()) {
        let (sh, sc) = summary_cells(w);
        h.push_str(&toc.h3(&format!("{bm}-steps"), "Sampler steps"));
        let _ = writeln!(
            h,
            "<p>{} Tables: <a href=\"{1}/sampler_steps.csv\">sampler_steps.csv</a>, \
             <a href=\"{1}/sampler_steps.md\">sampler_steps.md</a>.</p>",
            esc(crate::tables::STEPS_CAPTION),
            esc(bm)
        );
        h.push_str(&details(
            &format!("Scores at each number of steps ({} rows)", sc.len()),
            &table(&sh, &sc),
        ));
    }
    let notes = merged_notes(list, outs.map(|o| o.notes.as_slice()).unwrap_or(&[]));
    if !notes.is_empty() {
        h.push_str(&toc.h3(&format!("{bm}-notes"), "Notes"));
        h.push_str("<ul>");
        for n in notes {
            let _ = write!(h, "<li>{}</li>", esc(&n));
        }
        h.push_str("</ul>\n");
    }
    h
}

/// Every note of the runs once: a note several runs share is listed once with the runs it
/// applies to ("every model" when it is all of them), then the benchmark's own notes.
fn merged_notes(list: &[EvalMetrics], own: &[String]) -> Vec<String> {
    let mut by_text: Vec<(&str, Vec<&str>)> = Vec::new();
    for m in list {
        for n in &m.notes {
            match by_text.iter_mut().find(|(t, _)| t == n) {
                Some((_, runs)) => runs.push(&m.run),
                None => by_text.push((n, vec![&m.run])),
            }
        }
    }
    by_text
        .into_iter()
        .map(|(text, runs)| match runs.len() {
            n if n == list.len() && n > 1 => format!("every model ({n}): {text}"),
            1 => format!("{}: {text}", runs[0]),
            _ => format!("{}: {text}", runs.join(", ")),
        })
        .chain(own.iter().cloned())
        .collect()
}

/// The first samples of real test images, the base and the first run of each method (the
/// same seeds, so a column is one seed), each row 116 px high (a 32-px sample at about 3.5x);
/// every run's row behind a fold.
fn samples_side_by_side(o: &BenchOutputs, base: Option<&crate::base::BaseSummary>) -> String {
    let row = |label: &str, src: &str| {
        format!(
            "<tr><td>{}</td><td class=\"strip\"><img src=\"{}\" alt=\"samples of {}\"></td></tr>",
            esc(label),
            esc(src),
            esc(label)
        )
    };
    let head = "<table class=\"grid\"><thead><tr><th>model</th><th>the first samples (one seed per column)</th></tr></thead><tbody>";
    let mut first = String::from(head);
    if let Some(p) = base.and_then(|b| b.real_strip.as_ref()) {
        first.push_str(&row("real test images", p));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (stem, run) in &o.grids {
        let group = acpo_core::layout::replicate_group(run).unwrap_or(run);
        if seen.insert(group.to_string()) {
            first.push_str(&row(run, &format!("{stem}.png")));
        }
    }
    first.push_str("</tbody></table>\n");
    let mut all = String::from(head);
    for (stem, run) in &o.grids {
        all.push_str(&row(run, &format!("{stem}.png")));
    }
    all.push_str("</tbody></table>\n");
    let mut h = String::from(
        "<p>Real test images, the base and the first training seed of each method, on the same sampling seeds.</p>\n",
    );
    h.push_str(&first);
    if o.grids.len() > seen.len() {
        h.push_str(&details(
            &format!("Every run ({} models)", o.grids.len()),
            &all,
        ));
    }
    h
}

/// The generated headline of every benchmark (experiment::headline), first on the page: one
/// row per tested group with the numbers the verdict rests on, the sentences behind a fold.
fn headline_section(toc: &mut Toc, outs: &BTreeMap<String, BenchOutputs>) -> String {
    let mut h = toc.h2("headline", "Does ACPO raise quality without drift?");
    h.push_str(
        "<p>Generated from the metrics below (report.headline: the method, the held-out judges and the drift \
         tolerances). Each number: mean [95% interval across training seeds]. A gain is the held-out judge's \
         relative improvement over the base on the same seeds (positive = better); the drift limits are the \
         tolerances the verdict uses.</p>\n",
    );
    let hls: Vec<&Headline> = outs
        .values()
        .flat_map(|o| o.headline.iter().chain(&o.also))
        .collect();
    let judges: Vec<String> = hls
        .iter()
        .flat_map(|hl| hl.judges.iter().map(|(j, _)| j.clone()))
        .fold(Vec::new(), |mut v, j| {
            if !v.contains(&j) {
                v.push(j);
            }
            v
        });
    let mut header = vec![
        "benchmark".to_string(),
        "method".into(),
        "seeds".into(),
        "verdict".into(),
    ];
    header.extend(judges.iter().map(|j| format!("{j} gain %")));
    header.extend([
        "Δ held-out MSE (limit)".into(),
        "anchor distance (limit)".into(),
    ]);
    let rows: Vec<Vec<String>> = hls
        .iter()
        .map(|hl| {
            let mut r = vec![
                hl.benchmark.clone(),
                hl.method.clone(),
                hl.seeds.to_string(),
                hl.verdict.text().to_string(),
            ];
            r.extend(judges.iter().map(|j| {
                hl.judges
                    .iter()
                    .find(|(n, _)| n == j)
                    .map(|(_, a)| fmt_across_short(a))
                    .unwrap_or_else(|| "–".into())
            }));
            r.push(format!(
                "{} ({})",
                fmt_across_short(&hl.mse_delta),
                short(hl.mse_limit)
            ));
            r.push(format!(
                "{} ({})",
                fmt_across_short(&hl.anchor_distance),
                short(hl.anchor_limit)
            ));
            r
        })
        .collect();
    if !rows.is_empty() {
        h.push_str(&compact_table(&header, &rows));
    }
    let mut list = String::from("<ul>");
    for hl in &hls {
        let _ = write!(list, "<li>{}</li>", esc(&hl.text));
    }
    list.push_str("</ul>");
    h.push_str(&details(
        "The verdicts in words, with each run's sampling interval",
        &list,
    ));
    h
}

/// The opening: every base against real data, its samples beside real test images, its
/// training curve.
fn base_section(toc: &mut Toc, bases: &[crate::base::BaseSummary]) -> String {
    let mut h = toc.h2("base", "Base models");
    let _ = writeln!(h, "<p>{}</p>\n<ul>", esc(crate::base::BASE_CAPTION));
    for b in bases {
        let _ = write!(h, "<li>{}</li>", esc(&crate::base::base_sentence(b)));
    }
    h.push_str("</ul>\n");
    let (hd, rows) = crate::base::base_table(bases);
    h.push_str(&compact_table(&hd, &rows));
    for b in bases {
        let _ = write!(
            h,
            "<h3>{0}: base samples and real test images</h3><table class=\"grid\"><thead><tr><th>base samples (first 64 evaluation seeds)</th><th>real test images</th></tr></thead><tbody><tr>",
            esc(&b.benchmark)
        );
        for g in [&b.base_grid, &b.real_grid] {
            match g {
                Some(p) => {
                    let _ = write!(h, "<td><img src=\"{0}\" alt=\"{0}\"></td>", esc(p));
                }
                None => h.push_str("<td>not available</td>"),
            }
        }
        h.push_str("</tr></tbody></table>\n");
        if let Some(c) = &b.curve {
            let _ = writeln!(
                h,
                "<figure><img src=\"{0}\" alt=\"{1}: base training loss\"><figcaption>{1}: base training loss</figcaption></figure>",
                esc(c),
                esc(&b.benchmark)
            );
        }
        if !b.notes.is_empty() {
            h.push_str("<ul>");
            for n in &b.notes {
                let _ = write!(h, "<li>{}</li>", esc(n));
            }
            h.push_str("</ul>\n");
        }
    }
    h
}

/// Links to the base-training study reports in `<reports>/study/<benchmark>/study.md`, which
/// `just study` writes (stage study-report, not this one): listed when present, so the page
/// links whatever study was committed beside it.
fn study_links(toc: &mut Toc, out_dir: &std::path::Path) -> String {
    let mut found: Vec<String> = std::fs::read_dir(out_dir.join("study"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("study.md").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    found.sort();
    let mut h = toc.h2("study", "Base-training study");
    h.push_str("<p>");
    if found.is_empty() {
        h.push_str("No study report yet: <code>just study</code> writes <code>study/&lt;benchmark&gt;/study.md</code>.");
    } else {
        h.push_str("Which base-training recipe buys the most quality per CPU-minute (<code>just study</code>): ");
        let links: Vec<String> = found
            .iter()
            .map(|b| format!("<a href=\"study/{0}/study.md\">{0}</a> (<a href=\"study/{0}/quality_vs_cpu.png\">plot</a>)", esc(b)))
            .collect();
        h.push_str(&links.join(", "));
        h.push('.');
    }
    h.push_str("</p>\n");
    h
}

/// Links to the text-to-image reports `<reports>/<benchmark>-text/summary.md`, which the
/// `text-report` stage writes (not this one): listed when present, like the study.
fn text_links(toc: &mut Toc, out_dir: &std::path::Path) -> String {
    let mut found: Vec<String> = std::fs::read_dir(out_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("summary.md").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.ends_with("-text"))
        .collect();
    found.sort();
    let mut h = toc.h2("text", "Text-to-image");
    h.push_str("<p>");
    if found.is_empty() {
        h.push_str(
            "No text-to-image report yet: the <code>text-report</code> stage writes \
             <code>&lt;benchmark&gt;-text/summary.md</code> (the prompt-conditioned model fine-tuned on prompts, \
             judged on the held-out prompt sets).",
        );
    } else {
        h.push_str("The prompt-conditioned model fine-tuned on prompts and judged on held-out prompt sets (stage <code>text-report</code>): ");
        let links: Vec<String> = found
            .iter()
            .map(|b| format!("<a href=\"{0}/summary.md\">{0}</a>", esc(b)))
            .collect();
        h.push_str(&links.join(", "));
        h.push('.');
    }
    h.push_str("</p>\n");
    h
}

fn provenance(toc: &mut Toc, spec: &ReportSpec) -> Result<String> {
    let mut h = toc.h2("provenance", "Provenance");
    let lock_path = spec.root.join(&spec.provenance.lock);
    let lock: serde_json::Value = match std::fs::read_to_string(&lock_path) {
        Ok(t) => serde_json::from_str(&t).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    };
    let stages = lock.get("stages").and_then(|s| s.as_object());
    let hd = [
        "stage",
        "key",
        "profile",
        "wall time (s)",
        "peak memory (MiB)",
        "restored from cache",
        "params",
    ]
    .map(String::from);
    let mut rows = Vec::new();
    let mut total = 0.0;
    if let Some(st) = stages {
        for (name, e) in st {
            let f = |k: &str| e.get(k).and_then(|v| v.as_f64());
            total += f("wall_s").unwrap_or(0.0);
            let params = e
                .get("inputs")
                .and_then(|i| i.get("params"))
                .and_then(|p| p.as_object())
                .map(|p| {
                    p.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            let key = e.get("key").and_then(|k| k.as_str()).unwrap_or("");
            rows.push(vec![
                name.clone(),
                key.chars().take(16).collect(),
                e.get("profile")
                    .and_then(|p| p.as_str())
                    .unwrap_or("")
                    .to_string(),
                f("wall_s").map(|v| format!("{v:.1}")).unwrap_or_default(),
                f("peak_rss_mib")
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_default(),
                e.get("restored").map(|v| v.to_string()).unwrap_or_default(),
                params,
            ]);
        }
    }
    if rows.is_empty() {
        let _ = writeln!(
            h,
            "<p>{} has no stage entries (stages run by hand, outside <code>acpo repro</code>).</p>",
            esc(&lock_path.display().to_string())
        );
    } else {
        let _ = writeln!(
            h,
            "<p>From <code>pipeline.lock</code> at the time this report was built (the report stage itself is not in it): \
             {} stages, {:.0} s of stage wall time in total.</p>",
            rows.len(),
            total
        );
        h.push_str(&details(
            &format!(
                "Every stage: key, wall time, peak memory, params ({} rows)",
                rows.len()
            ),
            &table(&hd, &rows),
        ));
    }
    // Data checksums from the prepared datasets' manifests.
    let mut drows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for bm in &spec.benchmarks {
        if !seen.insert(bm.dataset.clone()) {
            continue;
        }
        let p = spec
            .layout()
            .prepared(&bm.dataset)
            .path
            .join("manifest.json");
        let v: serde_json::Value = match std::fs::read_to_string(&p) {
            Ok(t) => serde_json::from_str(&t).unwrap_or(serde_json::Value::Null),
            Err(_) => continue,
        };
        for s in v
            .get("sources")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
        {
            let g = |k: &str| {
                s.get(k)
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .unwrap_or_default()
            };
            drows.push(vec![
                bm.dataset.clone(),
                g("path"),
                g("sha256"),
                g("bytes"),
                g("location"),
            ]);
        }
    }
    if !drows.is_empty() {
        h.push_str(&details(
            &format!(
                "Data checksums: SHA-256 of every source file read ({} files)",
                drows.len()
            ),
            &table(
                &["dataset", "file", "sha256", "bytes", "read from"].map(String::from),
                &drows,
            ),
        ));
    }
    h.push_str(&details(
        "Report params",
        &format!(
            "<pre>{}</pre>",
            esc(&serde_json::to_string_pretty(&spec.provenance.params).unwrap_or_default())
        ),
    ));
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_list_every_heading_with_its_id() {
        let mut toc = Toc::default();
        let a = toc.h2("bm-x", "Benchmark x");
        let b = toc.h3("x-notes", "Notes");
        assert_eq!(a, "<h2 id=\"bm-x\">Benchmark x</h2>\n");
        assert_eq!(b, "<h3 id=\"x-notes\">Notes</h3>\n");
        let nav = toc.html();
        assert!(
            nav.contains("<a href=\"#bm-x\">Benchmark x</a><ul><li><a href=\"#x-notes\">Notes</a>")
        );
    }
}
