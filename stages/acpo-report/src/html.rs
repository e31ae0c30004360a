//! `reports/index.html`: one self-contained page (images beside it, relative links), with
//! provenance: stage keys, params, git revision, acpo version, per-stage wall time and peak
//! memory from `pipeline.lock`, and the data checksums from the prepared datasets' manifests.

use crate::aggregate::{paper_cells, summary_cells, wide, BenchOutputs, PaperRow, ReportSpec};
use crate::error::Result;
use crate::schema::EvalMetrics;
use std::collections::BTreeMap;
use std::fmt::Write;

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

const STYLE: &str = "body{font-family:DejaVu Sans,Arial,sans-serif;margin:2em;max-width:1400px;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #bbb;padding:3px 6px;vertical-align:top}\
th{background:#eee}td{white-space:nowrap}td:last-child{white-space:normal}img{max-width:100%;border:1px solid #ddd}\
.grid img{image-rendering:pixelated}code{background:#f4f4f4}";

/// After load, the page records on `<body>` how many images failed to load and how many
/// tables have no rows (`data-broken-images`, `data-empty-tables`), so a headless browser's
/// `--dump-dom` shows what the browser itself saw (the end-to-end test reads them).
const SELF_CHECK: &str = "<script>window.addEventListener('load',function(){\
var b=Array.prototype.filter.call(document.images,function(i){return !(i.complete&&i.naturalWidth>0);});\
var t=Array.prototype.filter.call(document.querySelectorAll('table'),function(x){return x.querySelectorAll('tbody tr').length===0;});\
document.body.setAttribute('data-images',document.images.length);\
document.body.setAttribute('data-broken-images',b.length);\
document.body.setAttribute('data-broken-list',b.map(function(i){return i.getAttribute('src');}).join(' '));\
document.body.setAttribute('data-tables',document.querySelectorAll('table').length);\
document.body.setAttribute('data-empty-tables',t.length);\
document.body.setAttribute('data-checked','1');});</script>\n";

/// Builds the page.
pub fn index_html(
    spec: &ReportSpec,
    bases: &[crate::base::BaseSummary],
    evals: &BTreeMap<String, Vec<EvalMetrics>>,
    paper: &[PaperRow],
    outs: &BTreeMap<String, BenchOutputs>,
) -> Result<String> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>acpo report</title><style>{STYLE}</style></head><body>\n\
         <h1>ACPO reproduction report</h1>\n<p>Profile <code>{}</code>, acpo {}, git revision <code>{}</code>. \
         Every number: mean [95% interval] n=sample count; intervals are t (means), bootstrap (relative improvement, FID), \
         wilson (win rates), u-statistic (diversity), subset-sd (KID), exact (zero by construction).</p>\n",
        esc(&spec.provenance.profile),
        esc(&spec.provenance.acpo_version),
        esc(&spec.provenance.git_revision)
    );
    h.push_str(&headline_section(outs));
    h.push_str(&base_section(bases));
    h.push_str(&study_links(&spec.out_dir));
    h.push_str("<h2>Our numbers beside the paper's</h2>\n");
    let (ph, pr) = paper_cells(paper);
    h.push_str(&table(&ph, &pr));
    for (bm, list) in evals {
        let _ = writeln!(h, "<h2 id=\"{0}\">Benchmark {0}</h2>", esc(bm));
        if let Some(o) = outs.get(bm) {
            let _ = writeln!(
                h,
                "<h3>Methods across training seeds</h3><p>{} Tables: <a href=\"{1}/methods.csv\">methods.csv</a>, \
                 <a href=\"{1}/methods.md\">methods.md</a>; by timestep: <a href=\"{1}/drift_by_t.md\">drift_by_t.md</a>.</p>",
                esc(crate::aggregate::METHODS_CAPTION),
                esc(bm)
            );
            h.push_str(&table(&o.methods.0, &o.methods.1));
            let _ = writeln!(h, "<h3>Every run</h3>");
        }
        let rows: Vec<_> = list.iter().flat_map(crate::aggregate::rows_of).collect();
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
        h.push_str(&table(&hd, &cells));
        if let Some(w) = outs.get(bm).and_then(|o| o.steps.as_ref()) {
            let (sh, sc) = summary_cells(w);
            let _ = writeln!(
                h,
                "<h3>Sampler steps</h3><p>{} Tables: <a href=\"{1}/sampler_steps.csv\">sampler_steps.csv</a>, \
                 <a href=\"{1}/sampler_steps.md\">sampler_steps.md</a>.</p>",
                esc(crate::aggregate::STEPS_CAPTION),
                esc(bm)
            );
            h.push_str(&table(&sh, &sc));
        }
        let notes: Vec<String> = list
            .iter()
            .flat_map(|m| m.notes.iter().map(move |n| format!("{}: {n}", m.run)))
            .chain(outs.get(bm).map(|o| o.notes.clone()).unwrap_or_default())
            .collect();
        if !notes.is_empty() {
            h.push_str("<ul>");
            for n in notes {
                let _ = write!(h, "<li>{}</li>", esc(&n));
            }
            h.push_str("</ul>\n");
        }
        if let Some(o) = outs.get(bm) {
            for (stem, caption) in &o.plots {
                let _ = writeln!(
                    h,
                    "<figure><img src=\"{0}.png\" alt=\"{1}\"><figcaption>{1} (<a href=\"{0}.svg\">SVG</a>)</figcaption></figure>",
                    esc(stem),
                    esc(caption)
                );
            }
            if !o.grids.is_empty() {
                h.push_str("<h3>Samples on the same seeds</h3><table class=\"grid\"><thead><tr><th>model</th><th>first samples</th></tr></thead><tbody>");
                for (stem, run) in &o.grids {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td><img src=\"{}.png\" alt=\"samples of {}\"></td></tr>",
                        esc(run),
                        esc(stem),
                        esc(run)
                    );
                }
                h.push_str("</tbody></table>\n");
            }
        }
    }
    h.push_str(&provenance(spec)?);
    h.push_str(SELF_CHECK);
    h.push_str("</body></html>\n");
    Ok(h)
}

/// The opening: every base against real data, its samples beside real test images, its
/// training curve.
/// The generated headline of every benchmark (experiment::headline), first on the page.
fn headline_section(outs: &BTreeMap<String, BenchOutputs>) -> String {
    let mut h = String::from(
        "<h2 id=\"headline\">Does ACPO raise quality without drift?</h2>\n<p>Generated from the \
         metrics below (report.headline: the method, the held-out judges and the drift tolerances); \
         each number: mean [95% interval across training seeds] (within ±: one run's sampling \
         interval) seeds=n.</p>\n<ul>",
    );
    for o in outs.values() {
        for hl in o.headline.iter().chain(&o.also) {
            let _ = write!(h, "<li>{}</li>", esc(&hl.text));
        }
    }
    h.push_str("</ul>\n");
    h
}

fn base_section(bases: &[crate::base::BaseSummary]) -> String {
    let mut h = format!(
        "<h2 id=\"base\">Base models</h2>\n<p>{}</p>\n",
        esc(crate::base::BASE_CAPTION)
    );
    let (hd, rows) = crate::base::base_table(bases);
    h.push_str(&table(&hd, &rows));
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
fn study_links(out_dir: &std::path::Path) -> String {
    let mut found: Vec<String> = std::fs::read_dir(out_dir.join("study"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("study.md").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    found.sort();
    let mut h = String::from("<h2 id=\"study\">Base-training study</h2>\n<p>");
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

fn provenance(spec: &ReportSpec) -> Result<String> {
    let mut h = String::from("<h2>Provenance</h2>\n");
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
        h.push_str(&table(&hd, &rows));
    }
    // Data checksums from the prepared datasets' manifests.
    let mut drows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for bm in &spec.benchmarks {
        if !seen.insert(bm.dataset.clone()) {
            continue;
        }
        let p = spec
            .root
            .join("data/prepared")
            .join(&bm.dataset)
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
        h.push_str("<h3>Data checksums (SHA-256 of every source file read)</h3>\n");
        h.push_str(&table(
            &["dataset", "file", "sha256", "bytes", "read from"].map(String::from),
            &drows,
        ));
    }
    let _ = writeln!(
        h,
        "<h3>Report params</h3><pre>{}</pre>",
        esc(&serde_json::to_string_pretty(&spec.provenance.params).unwrap_or_default())
    );
    Ok(h)
}
