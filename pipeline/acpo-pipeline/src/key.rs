//! The stage key: SHA-256 over a canonical, versioned, length-prefixed encoding of
//! everything a stage's result depends on. Never mtimes, never `std::hash`.

use crate::hash::PathHash;
use crate::params::canonical_json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Version of the stage-key encoding; bump to invalidate every key.
pub const KEY_VERSION: u32 = 1;

/// Length-prefixed encoder: every field is its byte length (u64 LE) then its bytes,
/// so no two different field sequences encode the same.
pub struct Encoder {
    h: Sha256,
}

impl Encoder {
    /// Starts an encoding with a domain tag and version.
    pub fn new(domain: &str, version: u32) -> Encoder {
        let mut e = Encoder { h: Sha256::new() };
        e.field(domain);
        e.field(&version.to_string());
        e
    }

    /// Appends one field.
    pub fn field(&mut self, s: &str) {
        self.h.update((s.len() as u64).to_le_bytes());
        self.h.update(s.as_bytes());
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex::encode(self.h.finalize())
    }
}

/// Everything that goes into a stage key, kept for `status` and `explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub acpo_version: String,
    pub cmd: String,
    /// Declared param values.
    pub params: BTreeMap<String, Value>,
    /// Dependency hashes; `None` for a dependency that does not exist (yet).
    pub deps: BTreeMap<String, Option<PathHash>>,
    /// Declared environment variables (`None`: unset).
    pub env: BTreeMap<String, Option<String>>,
    /// Declared output paths.
    pub outs: Vec<String>,
}

impl KeyInputs {
    /// The stage key (hex SHA-256).
    pub fn key(&self) -> String {
        let mut e = Encoder::new("acpo-stage-key", KEY_VERSION);
        e.field("acpo");
        e.field(&self.acpo_version);
        e.field("cmd");
        e.field(&self.cmd);
        e.field("params");
        e.field(&self.params.len().to_string());
        for (k, v) in &self.params {
            e.field(k);
            e.field(&canonical_json(v));
        }
        e.field("deps");
        e.field(&self.deps.len().to_string());
        for (p, h) in &self.deps {
            e.field(p);
            match h {
                Some(h) => {
                    e.field(&h.kind);
                    e.field(&h.hash);
                }
                None => {
                    e.field("missing");
                    e.field("");
                }
            }
        }
        e.field("env");
        e.field(&self.env.len().to_string());
        for (k, v) in &self.env {
            e.field(k);
            match v {
                Some(v) => {
                    e.field("set");
                    e.field(v);
                }
                None => {
                    e.field("unset");
                    e.field("");
                }
            }
        }
        e.field("outs");
        e.field(&self.outs.len().to_string());
        let mut outs = self.outs.clone();
        outs.sort();
        for o in &outs {
            e.field(o);
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> KeyInputs {
        KeyInputs {
            acpo_version: "0.1.0".into(),
            cmd: "echo".into(),
            params: BTreeMap::from([("a".into(), serde_json::json!({"x": 1, "y": 2}))]),
            deps: BTreeMap::new(),
            env: BTreeMap::new(),
            outs: vec!["o".into()],
        }
    }

    #[test]
    fn key_is_stable_and_sensitive() {
        let k = base().key();
        assert_eq!(k, base().key());
        let mut b = base();
        b.cmd = "echo ".into();
        assert_ne!(b.key(), k);
        let mut b = base();
        b.params
            .insert("a".into(), serde_json::json!({"y": 2, "x": 1}));
        assert_eq!(b.key(), k, "param key order must not matter");
        let mut b = base();
        b.env.insert("X".into(), None);
        assert_ne!(b.key(), k);
    }

    #[test]
    fn length_prefix_separates_fields() {
        let mut a = Encoder::new("t", 1);
        a.field("ab");
        a.field("c");
        let mut b = Encoder::new("t", 1);
        b.field("a");
        b.field("bc");
        assert_ne!(a.finish(), b.finish());
    }
}
