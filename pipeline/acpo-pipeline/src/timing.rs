//! `acpo times`: where a run's time went, from what `pipeline.lock` recorded. Stage wall
//! times summed per stage group (the name before `@`) and divided into phases: each stage's
//! `timing:` names the phase of its wall time and, optionally, a metrics file among its
//! outputs that records seconds per part (`seconds.sampling: sampling`); what that file does
//! not account for counts for the stage's own phase. Restored stages count with the wall time
//! of the run that produced them, so the table describes the results in place, not the last
//! command. `repro` prints the same tables at its end; `--into FILE` puts the Markdown form
//! between two marker lines of a document, so a run-time table is never written by hand.

use crate::error::{Error, Result};
use crate::pipeline::Stage;
use crate::table::{Format, Table};
use crate::workspace::Workspace;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The line before the generated block in a document (`--into`).
pub const BEGIN_MARKER: &str = "<!-- begin: acpo times -->";
/// The line after it.
pub const END_MARKER: &str = "<!-- end: acpo times -->";

/// One stage group's recorded time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupTime {
    /// The stage name before `@`.
    pub group: String,
    /// Stages of the group asked about.
    pub stages: usize,
    /// Of those, stages with a recorded run.
    pub recorded: usize,
    /// Sum of their wall times, seconds.
    pub wall_s: f64,
    /// The longest one, seconds.
    pub longest_s: f64,
}

/// Recorded time per group and per phase.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Times {
    /// Groups in pipeline order.
    pub groups: Vec<GroupTime>,
    /// Phase -> seconds, largest first.
    pub phases: Vec<(String, f64)>,
    /// Sum of every recorded stage's wall time, seconds.
    pub total_s: f64,
    /// Profiles the recorded runs ran under.
    pub profiles: Vec<String>,
    /// Stages with no recorded run.
    pub unrecorded: Vec<String>,
    /// Timing files that could not be read (their stage's whole time went to its phase).
    pub notes: Vec<String>,
}

/// The recorded time of `names` (every stage when empty), in pipeline order.
pub fn times(ws: &Workspace, names: &[String]) -> Times {
    let mut t = Times::default();
    let mut phases: BTreeMap<String, f64> = BTreeMap::new();
    let mut profiles = std::collections::BTreeSet::new();
    for stage in &ws.pipeline.stages {
        if !names.is_empty() && !names.contains(&stage.name) {
            continue;
        }
        let entry = ws.lock.stages.get(&stage.name);
        let at = match t.groups.iter().position(|g| g.group == stage.base) {
            Some(i) => i,
            None => {
                t.groups.push(GroupTime {
                    group: stage.base.clone(),
                    stages: 0,
                    recorded: 0,
                    wall_s: 0.0,
                    longest_s: 0.0,
                });
                t.groups.len() - 1
            }
        };
        let g = &mut t.groups[at];
        g.stages += 1;
        let Some(entry) = entry else {
            t.unrecorded.push(stage.name.clone());
            continue;
        };
        g.recorded += 1;
        g.wall_s += entry.wall_s;
        g.longest_s = g.longest_s.max(entry.wall_s);
        t.total_s += entry.wall_s;
        profiles.insert(entry.profile.clone());
        let (parts, note) = split(&ws.root, stage, entry.wall_s);
        t.notes.extend(note);
        for (phase, s) in parts {
            *phases.entry(phase).or_default() += s;
        }
    }
    t.phases = phases.into_iter().collect();
    t.phases
        .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    t.profiles = profiles.into_iter().collect();
    t
}

/// One stage's wall time as phase -> seconds, and a note when its timing file is unusable.
/// Parts above the wall time (a clock read differently) are scaled down to fit it.
pub fn split(root: &Path, stage: &Stage, wall_s: f64) -> (Vec<(String, f64)>, Option<String>) {
    let own = |s: f64| vec![(stage.timing.phase.clone(), s)];
    let Some(from) = &stage.timing.from else {
        return (own(wall_s), None);
    };
    let values = match crate::metrics::read_metrics(&root.join(from)) {
        Ok(v) => v,
        Err(e) => return (own(wall_s), Some(format!("{}: {e}", stage.name))),
    };
    let mut seconds: BTreeMap<&str, f64> = BTreeMap::new();
    let mut missing = Vec::new();
    for key in stage.timing.phases.keys() {
        match values.get(key).and_then(|v| v.as_f64()) {
            Some(s) if s.is_finite() && s >= 0.0 => {
                seconds.insert(key, s);
            }
            _ => missing.push(key.as_str()),
        }
    }
    for (inner, outer) in &stage.timing.within {
        if let (Some(i), Some(o)) = (
            seconds.get(inner.as_str()).copied(),
            seconds.get_mut(outer.as_str()),
        ) {
            *o = (*o - i).max(0.0);
        }
    }
    let mut parts: Vec<(String, f64)> = stage
        .timing
        .phases
        .iter()
        .filter_map(|(key, phase)| seconds.get(key.as_str()).map(|s| (phase.clone(), *s)))
        .collect();
    let note = (!missing.is_empty()).then(|| {
        format!(
            "{}: {from} has no number of seconds at {}",
            stage.name,
            missing.join(", ")
        )
    });
    let sum: f64 = parts.iter().map(|p| p.1).sum();
    if sum > wall_s && sum > 0.0 {
        for p in &mut parts {
            p.1 *= wall_s / sum;
        }
    } else {
        parts.push((stage.timing.phase.clone(), wall_s - sum));
    }
    (parts, note)
}

fn minutes(s: f64) -> String {
    format!("{:.1}", s / 60.0)
}

fn share(s: f64, total: f64) -> String {
    if total > 0.0 {
        format!("{:.1}%", 100.0 * s / total)
    } else {
        "-".into()
    }
}

/// Stage groups: group, stages (recorded/asked), minutes, share, longest stage.
pub fn group_table(t: &Times) -> Table {
    let mut table = Table::new(&["stage group", "stages", "minutes", "share", "longest (min)"]);
    for g in &t.groups {
        let stages = if g.recorded == g.stages {
            g.stages.to_string()
        } else {
            format!("{} of {}", g.recorded, g.stages)
        };
        table.push(vec![
            g.group.clone(),
            stages,
            minutes(g.wall_s),
            share(g.wall_s, t.total_s),
            minutes(g.longest_s),
        ]);
    }
    table
}

/// Phases: phase, minutes, share.
pub fn phase_table(t: &Times) -> Table {
    let mut table = Table::new(&["phase", "minutes", "share"]);
    for (phase, s) in &t.phases {
        table.push(vec![phase.clone(), minutes(*s), share(*s, t.total_s)]);
    }
    table
}

/// The one-line summary above the tables.
pub fn headline(t: &Times) -> String {
    let recorded: usize = t.groups.iter().map(|g| g.recorded).sum();
    let profiles = if t.profiles.is_empty() {
        String::new()
    } else {
        format!(", profile {}", t.profiles.join(", "))
    };
    let mut s = format!(
        "{:.2} h of stage wall time recorded in pipeline.lock over {recorded} stage(s){profiles}",
        t.total_s / 3600.0
    );
    if !t.unrecorded.is_empty() {
        s.push_str(&format!("; {} stage(s) never ran", t.unrecorded.len()));
    }
    s
}

/// Both tables in `format`: JSON as one object, the others one after the other.
pub fn render(t: &Times, format: Format) -> String {
    if format == Format::Json {
        return serde_json::to_string_pretty(t).unwrap_or_default() + "\n";
    }
    let mut s = String::new();
    if format != Format::Csv {
        s.push_str(&headline(t));
        s.push_str(if format == Format::Markdown {
            ".\n\n"
        } else {
            "\n"
        });
    }
    s.push_str(&group_table(t).render(format));
    s.push('\n');
    s.push_str(&phase_table(t).render(format));
    for n in &t.notes {
        if format == Format::Markdown {
            s.push_str(&format!("\nNot divided into phases: {n}\n"));
        } else if format == Format::Text {
            s.push_str(&format!("not divided into phases: {n}\n"));
        }
    }
    s
}

/// `text` with the lines between [`BEGIN_MARKER`] and [`END_MARKER`] replaced by `block`;
/// `None` when either marker line is missing (or the end comes first).
pub fn splice(text: &str, block: &str) -> Option<String> {
    let begin = text.find(BEGIN_MARKER)?;
    let after_begin = begin + text[begin..].find('\n')? + 1;
    let end = after_begin + text[after_begin..].find(END_MARKER)?;
    let mut out = String::with_capacity(text.len() + block.len());
    out.push_str(&text[..after_begin]);
    out.push_str(block.trim_end());
    out.push('\n');
    out.push_str(&text[end..]);
    Some(out)
}

/// Writes the Markdown tables into `doc` between the marker lines (atomically).
pub fn write_into(t: &Times, doc: &Path) -> Result<()> {
    let text = std::fs::read_to_string(doc).map_err(|e| Error::io(doc, e))?;
    let spliced = splice(&text, &render(t, Format::Markdown)).ok_or_else(|| {
        Error::Usage(format!(
            "{}: expected a line `{BEGIN_MARKER}` followed later by a line `{END_MARKER}`, \
             between which `acpo times --into` writes its tables",
            doc.display()
        ))
    })?;
    crate::fsutil::write_atomic(doc, spliced.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Timing;

    fn stage(name: &str, timing: Timing) -> Stage {
        let text = format!("stages:\n  {name}:\n    cmd: 'true'\n    outs: [out]\n");
        let params = crate::Params::from_value(serde_json::json!({}), "cpu");
        let p = crate::Pipeline::from_str(
            Path::new("/r"),
            Path::new("/r/pipeline.yaml"),
            &text,
            &params,
        )
        .unwrap();
        let mut s = p.stages[0].clone();
        s.timing = timing;
        s
    }

    fn timing(from: Option<&str>, phases: &[(&str, &str)]) -> Timing {
        Timing {
            phase: "training".into(),
            from: from.map(String::from),
            phases: phases
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            within: BTreeMap::new(),
        }
    }

    #[test]
    fn a_stage_without_a_file_counts_whole_for_its_phase() {
        let s = stage("train", timing(None, &[]));
        let (parts, note) = split(Path::new("/nonexistent"), &s, 90.0);
        assert_eq!(parts, vec![("training".to_string(), 90.0)]);
        assert_eq!(note, None);
    }

    #[test]
    fn parts_from_the_file_and_the_rest_for_the_stage_phase() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(
            dir.path().join("out/m.json"),
            r#"{"seconds": {"sampling": 30, "scores": 5.5}}"#,
        )
        .unwrap();
        let s = stage(
            "eval",
            timing(
                Some("out/m.json"),
                &[
                    ("seconds.sampling", "sampling"),
                    ("seconds.scores", "judging"),
                ],
            ),
        );
        let (parts, note) = split(dir.path(), &s, 40.0);
        assert_eq!(note, None);
        assert_eq!(
            parts,
            vec![
                ("sampling".to_string(), 30.0),
                ("judging".to_string(), 5.5),
                ("training".to_string(), 4.5)
            ]
        );
        // Parts that add up to more than the wall time are scaled to it.
        let (parts, _) = split(dir.path(), &s, 17.75);
        let sum: f64 = parts.iter().map(|p| p.1).sum();
        assert!((sum - 17.75).abs() < 1e-12, "{parts:?}");
        assert_eq!(parts[0], ("sampling".to_string(), 15.0));
    }

    #[test]
    fn seconds_within_another_part_are_taken_out_of_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(
            dir.path().join("out/m.json"),
            r#"{"seconds": {"fid": 200, "base": 150, "sampling": 40}}"#,
        )
        .unwrap();
        let mut t = timing(
            Some("out/m.json"),
            &[
                ("seconds.fid", "fid"),
                ("seconds.base", "sampling+fid"),
                ("seconds.sampling", "sampling"),
            ],
        );
        t.within.insert("seconds.base".into(), "seconds.fid".into());
        let (parts, note) = split(dir.path(), &stage("eval", t), 300.0);
        assert_eq!(note, None);
        assert_eq!(
            parts,
            vec![
                ("sampling+fid".to_string(), 150.0),
                ("fid".to_string(), 50.0),
                ("sampling".to_string(), 40.0),
                ("training".to_string(), 60.0)
            ]
        );
    }

    #[test]
    fn a_missing_key_or_file_is_a_note_and_the_time_stays_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/m.json"), r#"{"seconds": {"a": 1}}"#).unwrap();
        let s = stage(
            "eval",
            timing(
                Some("out/m.json"),
                &[("seconds.a", "x"), ("seconds.b", "y")],
            ),
        );
        let (parts, note) = split(dir.path(), &s, 10.0);
        assert_eq!(
            parts,
            vec![("x".to_string(), 1.0), ("training".to_string(), 9.0)]
        );
        assert_eq!(
            note.as_deref(),
            Some("eval: out/m.json has no number of seconds at seconds.b")
        );
        let s = stage("gone", timing(Some("out/none.json"), &[("seconds.a", "x")]));
        let (parts, note) = split(dir.path(), &s, 10.0);
        assert_eq!(parts, vec![("training".to_string(), 10.0)]);
        assert!(note.unwrap().starts_with("gone: "));
    }

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let doc = format!("# T\nkeep\n{BEGIN_MARKER}\nold\nold\n{END_MARKER}\nafter\n");
        let out = splice(&doc, "new\n\n").unwrap();
        assert_eq!(
            out,
            format!("# T\nkeep\n{BEGIN_MARKER}\nnew\n{END_MARKER}\nafter\n")
        );
        // Twice gives the same text.
        assert_eq!(splice(&out, "new").unwrap(), out);
        assert_eq!(splice("no markers\n", "x"), None);
        assert_eq!(
            splice(&format!("{END_MARKER}\n{BEGIN_MARKER}\n"), "x"),
            None
        );
    }

    #[test]
    fn tables_show_minutes_and_shares() {
        let t = Times {
            groups: vec![
                GroupTime {
                    group: "train".into(),
                    stages: 2,
                    recorded: 2,
                    wall_s: 5400.0,
                    longest_s: 3000.0,
                },
                GroupTime {
                    group: "eval".into(),
                    stages: 3,
                    recorded: 2,
                    wall_s: 1800.0,
                    longest_s: 900.0,
                },
            ],
            phases: vec![("training".into(), 5400.0), ("sampling".into(), 1800.0)],
            total_s: 7200.0,
            profiles: vec!["cpu".into()],
            unrecorded: vec!["eval@c".into()],
            notes: vec![],
        };
        assert_eq!(
            render(&t, Format::Text),
            "2.00 h of stage wall time recorded in pipeline.lock over 4 stage(s), profile cpu; \
             1 stage(s) never ran\n\
             stage group  stages  minutes  share  longest (min)\n\
             train        2       90.0     75.0%  50.0\n\
             eval         2 of 3  30.0     25.0%  15.0\n\
             \n\
             phase     minutes  share\n\
             training  90.0     75.0%\n\
             sampling  30.0     25.0%\n"
        );
    }
}
