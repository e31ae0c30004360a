//! Atomic writes (every output goes to a temporary sibling and is renamed into place), and
//! reading the comma-separated files the stages write.

use crate::error::{ReportError, Result};
use std::path::Path;

/// Writes `bytes` to `path` through a temporary sibling (parents are created; acpo-core).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(acpo_core::write_atomic(path, bytes)?)
}

/// Pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(acpo_core::write_json(path, value)?)
}

/// Runs `f` on a temporary path and renames its result to `path` when it succeeds
/// (for writers that want a file name, such as plotters' backends; the temporary keeps the
/// extension, from which image encoders pick the format).
pub fn with_tmp_file(path: &Path, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    acpo_core::atomic::write_with(path, f)
}

/// Reads a file to a string, naming it in the error.
pub fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))
}

/// A comma-separated file with a header line.
#[derive(Debug, Clone, PartialEq)]
pub struct Csv {
    /// The header's fields.
    pub header: Vec<String>,
    /// Each data line's 1-based line number and fields; blank lines are skipped.
    pub rows: Vec<(usize, Vec<String>)>,
}

/// Reads a CSV with a header: an empty file, or a line whose field count is not the header's,
/// is an error naming the file and line. Parsing the fields is the caller's.
pub fn read_csv(path: &Path) -> Result<Csv> {
    let text = read_string(path)?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| ReportError::bad(path, "line 1", "empty file"))?
        .split(',')
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<String> = line.split(',').map(str::to_string).collect();
        if fields.len() != header.len() {
            return Err(ReportError::bad(
                path,
                format!("line {}", i + 2),
                format!("{} fields, header has {}", fields.len(), header.len()),
            ));
        }
        rows.push((i + 2, fields));
    }
    Ok(Csv { header, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_keep_their_line_numbers_and_a_short_row_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "a,b\n1,2\n\n3,4\n").unwrap();
        let csv = read_csv(&p).unwrap();
        assert_eq!(csv.header, ["a", "b"]);
        assert_eq!(csv.rows[1], (4, vec!["3".to_string(), "4".to_string()]));
        std::fs::write(&p, "a,b\n1,2\n3\n").unwrap();
        let err = read_csv(&p).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("1 fields"), "{err}");
        std::fs::write(&p, "").unwrap();
        assert!(read_csv(&p).unwrap_err().to_string().contains("empty file"));
    }
}
