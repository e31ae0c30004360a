//! Where a stage's files live around a run and how they move: the backup of its earlier
//! outputs (`.acpo/backup/<stage>/`), the partial outputs of a stopped `persist` stage
//! (`.acpo/partial/<stage>/`), its params and log files, and the recovery after an engine that
//! was killed outright.

use crate::confine::{decode_name, encode_name, resolve_out};
use crate::error::{Error, Result};
use crate::fsutil::{ensure_parent, remove_path, write_atomic};
use crate::pipeline::Stage;
use crate::progress::Progress;
use crate::workspace::Workspace;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `.acpo/backup/<stage>/` (the stage name encoded as one file name, [`encode_name`]).
pub(super) fn backup_dir(state: &Path, stage: &Stage) -> PathBuf {
    state.join("backup").join(encode_name(&stage.name))
}

/// `.acpo/params/<stage>.json`, the stage's declared params (`ACPO_PARAMS`).
pub(super) fn params_file(state: &Path, stage: &Stage) -> PathBuf {
    state
        .join("params")
        .join(format!("{}.json", encode_name(&stage.name)))
}

/// `.acpo/logs/<stage>.log`, the stage's output.
pub(super) fn log_file(state: &Path, stage: &Stage) -> PathBuf {
    state
        .join("logs")
        .join(format!("{}.log", encode_name(&stage.name)))
}

/// Whether the engine may move, remove or restore output `o` now (it resolves inside the
/// pipeline directory and is none of the engine's own paths, links followed).
pub(super) fn confined(root: &Path, o: &str) -> bool {
    resolve_out(root, o).is_ok()
}

/// The stage's outputs that exist (and may be touched), each with the numbered name it gets
/// in a backup or partial folder (its index in `outs`).
pub(super) fn existing_outs(root: &Path, stage: &Stage) -> Vec<(String, String)> {
    stage
        .outs
        .iter()
        .enumerate()
        .filter(|(_, o)| confined(root, o))
        .filter(|(_, o)| std::fs::symlink_metadata(root.join(o)).is_ok())
        .map(|(n, o)| (o.clone(), n.to_string()))
        .collect()
}

/// Whether a (path, numbered name) pair read from a backup or partial manifest is one the
/// engine may act on: a confined output and a plain number.
pub(super) fn manifest_pair_ok(root: &Path, o: &str, n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && confined(root, o)
}

/// Moves a stage's existing outputs into `.acpo/backup/<stage>/` (a manifest first, so a
/// killed engine can put them back on its next start) and creates the outs' parents.
pub(super) fn move_outs_aside(root: &Path, state: &Path, stage: &Stage) -> Result<()> {
    let dir = backup_dir(state, stage);
    remove_path(&dir)?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let moved = existing_outs(root, stage);
    let manifest = serde_json::to_vec(&moved).unwrap_or_default();
    write_atomic(&dir.join("manifest.json"), &manifest)?;
    for (o, n) in &moved {
        let src = root.join(o);
        std::fs::rename(&src, dir.join(n)).map_err(|e| Error::io(&src, e))?;
    }
    for o in &stage.outs {
        ensure_parent(&root.join(o))?;
    }
    Ok(())
}

/// Puts the outputs moved aside back in place (removing whatever partial outputs exist).
pub(super) fn restore_backup(root: &Path, state: &Path, stage: &Stage) -> Result<()> {
    restore_backup_dir(root, &backup_dir(state, stage))
}

/// Puts back what a backup folder's manifest lists. An entry that names a path the engine may
/// not touch (outside the directory, or reached through a link) is left in the folder, which
/// is then kept, and the error names it.
pub(super) fn restore_backup_dir(root: &Path, dir: &Path) -> Result<()> {
    let manifest = dir.join("manifest.json");
    let Ok(bytes) = std::fs::read(&manifest) else {
        return remove_path(dir);
    };
    let moved: Vec<(String, String)> = serde_json::from_slice(&bytes).unwrap_or_default();
    let refused: Vec<&str> = moved
        .iter()
        .filter(|(o, n)| !manifest_pair_ok(root, o, n))
        .map(|(o, _)| o.as_str())
        .collect();
    for (o, n) in &moved {
        if !manifest_pair_ok(root, o, n) {
            continue;
        }
        let src = dir.join(n);
        if src.exists() || std::fs::symlink_metadata(&src).is_ok() {
            let dst = root.join(o);
            remove_path(&dst)?;
            ensure_parent(&dst)?;
            std::fs::rename(&src, &dst).map_err(|e| Error::io(&dst, e))?;
        }
    }
    if !refused.is_empty() {
        return Err(Error::Corrupt {
            path: dir.to_path_buf(),
            message: format!(
                "not restored: {} would be written outside the pipeline directory or onto the \
                 engine's own files (through a symbolic link); the backup is kept here",
                refused
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    remove_path(dir)
}

pub(super) fn discard_backup(state: &Path, stage: &Stage) {
    let _ = remove_path(&backup_dir(state, stage));
}

/// `.acpo/partial/<stage>/` (the stage name encoded as one file name).
pub(super) fn partial_dir(state: &Path, stage: &Stage) -> PathBuf {
    state.join("partial").join(encode_name(&stage.name))
}

/// What `.acpo/partial/<stage>/manifest.json` records: the stage key of the run that left the
/// outputs, and which numbered entry of the folder each output is.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct PartialManifest {
    key: String,
    outs: Vec<(String, String)>,
}

/// After a failed or interrupted run: for a `persist` stage, moves the partial outputs into
/// `.acpo/partial/<stage>/` (replacing older ones) and appends a note to `msg`; otherwise
/// removes them. Either way the outs' paths are free afterwards for the backup to return.
pub(super) fn settle_partial(
    root: &Path,
    state: &Path,
    stage: &Stage,
    key: &str,
    msg: String,
) -> String {
    if stage.persist {
        match keep_partial(root, state, stage, key) {
            Ok(true) => {
                return format!(
                    "{msg}; its partial outputs are kept in {} and the next run with the same \
                     inputs resumes from them",
                    partial_dir(state, stage).display()
                )
            }
            Ok(false) => {}
            Err(e) => return format!("{msg}; keeping its partial outputs failed: {e}"),
        }
    }
    for o in stage.outs.iter().filter(|o| confined(root, o)) {
        let _ = remove_path(&root.join(o));
    }
    msg
}

pub(super) fn keep_partial(root: &Path, state: &Path, stage: &Stage, key: &str) -> Result<bool> {
    let dir = partial_dir(state, stage);
    remove_path(&dir)?;
    let outs = existing_outs(root, stage);
    if outs.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    for (o, n) in &outs {
        let src = root.join(o);
        std::fs::rename(&src, dir.join(n)).map_err(|e| Error::io(&src, e))?;
    }
    let manifest = PartialManifest {
        key: key.to_string(),
        outs,
    };
    write_atomic(
        &dir.join("manifest.json"),
        &serde_json::to_vec(&manifest).unwrap_or_default(),
    )?;
    Ok(true)
}

/// Before a `persist` stage runs: puts back the partial outputs an earlier run with the same
/// key left (true), or drops partial outputs of other inputs (false).
pub(super) fn take_partial(root: &Path, state: &Path, stage: &Stage, key: &str) -> Result<bool> {
    let dir = partial_dir(state, stage);
    let manifest: Option<PartialManifest> = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let usable = |m: &PartialManifest| {
        m.key == key
            && m.outs
                .iter()
                .all(|(o, n)| stage.outs.contains(o) && manifest_pair_ok(root, o, n))
    };
    let Some(m) = manifest.filter(usable) else {
        remove_path(&dir)?;
        return Ok(false);
    };
    for (o, n) in &m.outs {
        let dst = root.join(o);
        ensure_parent(&dst)?;
        let src = dir.join(n);
        std::fs::rename(&src, &dst).map_err(|e| Error::io(&dst, e))?;
    }
    remove_path(&dir)?;
    Ok(true)
}

/// After an engine that was killed outright: put back every output left moved aside.
/// Stops what an engine that was killed (not interrupted) left running, and keeps a persist
/// stage's partial outputs for its key, before [`recover_backups`] puts the earlier outputs
/// back (see [`crate::running`]).
pub(super) fn stop_left_behind(ws: &Workspace, progress: &Progress) -> Result<()> {
    let state = ws.state_dir();
    for rec in crate::running::left_behind(&state) {
        let n = crate::running::stop(&rec, Duration::from_secs(5));
        if n > 0 {
            progress.line(&format!(
                "{}: stopped {n} process(es) that a killed acpo left running (process group {})",
                rec.stage, rec.pgid
            ));
        }
        if let Some(i) = ws.pipeline.index_of(&rec.stage) {
            let stage = &ws.pipeline.stages[i];
            if stage.persist && keep_partial(&ws.root, &state, stage, &rec.key)? {
                progress.line(&format!(
                    "{}: its partial outputs are kept in {} and the next run with the same \
                     inputs resumes from them",
                    rec.stage,
                    partial_dir(&state, stage).display()
                ));
            }
        }
        crate::running::remove(&state, &rec.stage);
    }
    Ok(())
}

pub(super) fn recover_backups(ws: &Workspace, progress: &Progress) -> Result<()> {
    let dir = ws.state_dir().join("backup");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let name = decode_name(&file_name);
        if let Some(i) = name.as_deref().and_then(|n| ws.pipeline.index_of(n)) {
            for o in &ws.pipeline.stages[i].outs {
                if confined(&ws.root, o) {
                    remove_path(&ws.root.join(o))?;
                }
            }
        }
        let name = name.unwrap_or(file_name);
        progress.line(&format!(
            "{name}: restoring the outputs of an interrupted run"
        ));
        restore_backup_dir(&ws.root, &e.path())?;
    }
    Ok(())
}
