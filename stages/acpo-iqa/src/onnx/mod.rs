//! ONNX: hand-declared protobuf messages ([`proto`]), a small graph builder and the CNNIQA
//! exporter ([`export`]), and evaluation of `.onnx` models with ONNX Runtime ([`runtime`]).

pub mod export;
pub mod proto;
pub mod runtime;

pub use export::{export_cnniqa, CnniqaExport};
pub use runtime::{init_ort, OnnxModel};
