//! Writing ONNX graphs from Rust, and the CNNIQA exporter.

use std::path::Path;

use candle_core::Tensor;
use prost::Message;

use super::proto::*;
use crate::cnniqa::{Cnniqa, PatchMode, LCN_C, LCN_EPS, PATCH};
use crate::error::{IqaError, Result};
use crate::imageio::PILLOW_LUMA;

/// ONNX opset the exporter targets (ReduceMax/Min/Mean still take `axes` as an attribute).
pub const OPSET: i64 = 17;
/// IR version matching opset 17.
pub const IR_VERSION: i64 = 8;

/// Incrementally builds a `GraphProto`; every node gets one auto-named output.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    counter: usize,
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INT),
        i: Some(v),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::STRING),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

impl GraphBuilder {
    /// Adds a float initializer (raw little-endian data).
    pub fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        assert_eq!(
            dims.iter().product::<usize>(),
            data.len(),
            "initializer {name}"
        );
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DT_FLOAT),
            name: Some(name.into()),
            raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds an int64 initializer.
    pub fn init_i64(&mut self, name: &str, data: &[i64]) -> String {
        self.inits.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: Some(DT_INT64),
            name: Some(name.into()),
            raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a float initializer from a candle tensor.
    pub fn init_tensor(&mut self, name: &str, t: &Tensor) -> Result<String> {
        let data: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Ok(self.init_f32(name, t.dims(), &data))
    }

    /// Appends `op(inputs)` with attributes; returns its output name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.counter += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.counter);
        self.node_named(op, inputs, attrs, &out);
        out
    }

    /// Appends `op(inputs)` writing to the given output name.
    pub fn node_named(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, out: &str) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: Some(format!("n{}_{}", self.nodes.len(), op)),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Finishes the model with one float input and one float output.
    pub fn finish(
        self,
        name: &str,
        input: (&str, &[Dim]),
        output: (&str, &[Dim]),
        metadata: &[(&str, String)],
        doc: &str,
    ) -> ModelProto {
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("acpo-iqa".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            doc_string: Some(doc.into()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(name.into()),
                initializer: self.inits,
                input: vec![value_info(input.0, input.1)],
                output: vec![value_info(output.0, output.1)],
                ..Default::default()
            }),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.to_string()),
                    value: Some(v.clone()),
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// One dimension of a graph input/output.
#[derive(Clone, Debug)]
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(DT_FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(v) => Dimension {
                                dim_value: Some(*v as i64),
                                ..Default::default()
                            },
                            Dim::Named(s) => Dimension {
                                dim_param: Some(s.to_string()),
                                ..Default::default()
                            },
                        })
                        .collect(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes a model to `path` (temporary name, renamed into place on success; acpo-core).
pub fn write_model(model: &ModelProto, path: &Path) -> Result<()> {
    Ok(acpo_core::write_atomic(path, &model.encode_to_vec())?)
}

/// Reads and decodes a model file.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| IqaError::model_io(path, e))?;
    ModelProto::decode(bytes.as_slice())
        .map_err(|e| IqaError::bad_model(path, format!("not an ONNX model: {e}")))
}

/// What the CNNIQA export describes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CnniqaExport {
    pub height: usize,
    pub width: usize,
    pub patch_rows: usize,
    pub patch_cols: usize,
}

/// Builds the CNNIQA ONNX graph for a fixed `height x width`, inclusive patch grid.
///
/// Input `image`: `[N, 3, H, W]` float RGB in [0, 1] (N dynamic). Gray is the continuous BT.601
/// luma with Pillow's weights (a 1x1 Conv), as on the differentiable candle path. Output `score`:
/// `[N]` raw CNNIQA scores, higher = worse. The LCN is written with the same centred 3x3 variance
/// and `sqrt(var + 1e-10)` as the candle model, so both agree to float rounding.
pub fn cnniqa_graph(
    model: &Cnniqa,
    height: usize,
    width: usize,
) -> Result<(ModelProto, CnniqaExport)> {
    let (ny, nx) = PatchMode::Inclusive.grid(height, width);
    if ny == 0 || nx == 0 {
        return Err(IqaError::Input(format!(
            "CNNIQA export needs at least 32x32 pixels, got {width}x{height}"
        )));
    }
    let w = model.weights();
    let mut g = GraphBuilder::default();
    let luma: Vec<f32> = PILLOW_LUMA.iter().map(|&v| v as f32).collect();
    let w_luma = g.init_f32("luma_weight", &[1, 3, 1, 1], &luma);
    let gray = g.node("Conv", &["image", &w_luma], vec![]);
    let starts = g.init_i64("crop_starts", &[0, 0]);
    let ends = g.init_i64("crop_ends", &[(ny * PATCH) as i64, (nx * PATCH) as i64]);
    let axes23 = g.init_i64("axes_hw", &[2, 3]);
    let crop = g.node("Slice", &[&gray, &starts, &ends, &axes23], vec![]);
    let shape5 = g.init_i64(
        "grid_shape",
        &[-1, ny as i64, PATCH as i64, nx as i64, PATCH as i64],
    );
    let grid = g.node("Reshape", &[&crop, &shape5], vec![]);
    let tr = g.node(
        "Transpose",
        &[&grid],
        vec![attr_ints("perm", &[0, 1, 3, 2, 4])],
    );
    let pshape = g.init_i64("patch_shape", &[-1, 1, PATCH as i64, PATCH as i64]);
    let patches = g.node("Reshape", &[&tr, &pshape], vec![]);
    // LCN
    let pads = g.init_i64("lcn_pads", &[0, 0, 1, 1, 0, 0, 1, 1]);
    let padded = g.node("Pad", &[&patches, &pads], vec![attr_string("mode", "edge")]);
    let mut shifts = Vec::new();
    for dy in 0..3i64 {
        for dx in 0..3i64 {
            let s = g.init_i64(&format!("shift_start_{dy}{dx}"), &[dy, dx]);
            let e = g.init_i64(
                &format!("shift_end_{dy}{dx}"),
                &[dy + PATCH as i64, dx + PATCH as i64],
            );
            shifts.push(g.node("Slice", &[&padded, &s, &e, &axes23], vec![]));
        }
    }
    let nine = g.init_f32("nine", &[], &[9.0]);
    let refs: Vec<&str> = shifts.iter().map(String::as_str).collect();
    let sum = g.node("Sum", &refs, vec![]);
    let mu = g.node("Div", &[&sum, &nine], vec![]);
    let mut sqs = Vec::new();
    for s in &shifts {
        let d = g.node("Sub", &[s, &mu], vec![]);
        sqs.push(g.node("Mul", &[&d, &d], vec![]));
    }
    let refs: Vec<&str> = sqs.iter().map(String::as_str).collect();
    let ssum = g.node("Sum", &refs, vec![]);
    let var = g.node("Div", &[&ssum, &nine], vec![]);
    let eps = g.init_f32("lcn_eps", &[], &[LCN_EPS as f32]);
    let var_eps = g.node("Add", &[&var, &eps], vec![]);
    let sigma = g.node("Sqrt", &[&var_eps], vec![]);
    let c = g.init_f32("lcn_c", &[], &[LCN_C as f32]);
    let den = g.node("Add", &[&sigma, &c], vec![]);
    let centred = g.node("Sub", &[&patches, &mu], vec![]);
    let lcn = g.node("Div", &[&centred, &den], vec![]);
    // network
    let cw = g.init_tensor("conv1.weight", &w.conv1_weight)?;
    let cb = g.init_tensor("conv1.bias", &w.conv1_bias)?;
    let conv = g.node("Conv", &[&lcn, &cw, &cb], vec![]);
    let mx = g.node(
        "ReduceMax",
        &[&conv],
        vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 0)],
    );
    let mn = g.node(
        "ReduceMin",
        &[&conv],
        vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 0)],
    );
    let feat = g.node("Concat", &[&mx, &mn], vec![attr_int("axis", 1)]);
    let mut h = feat;
    for (i, (wt, b)) in [
        (&w.fc1_weight, &w.fc1_bias),
        (&w.fc2_weight, &w.fc2_bias),
        (&w.fc3_weight, &w.fc3_bias),
    ]
    .into_iter()
    .enumerate()
    {
        let wn = g.init_tensor(&format!("fc{}.weight", i + 1), wt)?;
        let bn = g.init_tensor(&format!("fc{}.bias", i + 1), b)?;
        h = g.node("Gemm", &[&h, &wn, &bn], vec![attr_int("transB", 1)]);
        if i < 2 {
            h = g.node("Relu", &[&h], vec![]);
        }
    }
    let sshape = g.init_i64("score_shape", &[-1, (ny * nx) as i64]);
    let per_image = g.node("Reshape", &[&h, &sshape], vec![]);
    g.node_named(
        "ReduceMean",
        &[&per_image],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
        "score",
    );
    let info = CnniqaExport {
        height,
        width,
        patch_rows: ny,
        patch_cols: nx,
    };
    let model = g.finish(
        "cnniqa_live",
        (
            "image",
            &[Dim::Named("N"), Dim::Fixed(3), Dim::Fixed(height), Dim::Fixed(width)],
        ),
        ("score", &[Dim::Named("N")]),
        &[
            ("acpo.model", "CNNIQA-LIVE (lidq92/CNNIQA)".into()),
            ("acpo.input", "RGB float in [0,1], NCHW".into()),
            ("acpo.patch_mode", "inclusive".into()),
            ("acpo.higher_is_better", "false".into()),
        ],
        "CNNIQA (Kang et al. 2014), LIVE weights; continuous BT.601 luma; raw DMOS-like score, higher = worse",
    );
    Ok((model, info))
}

/// Exports CNNIQA for `height x width` inputs to `path`.
pub fn export_cnniqa(
    model: &Cnniqa,
    height: usize,
    width: usize,
    path: &Path,
) -> Result<CnniqaExport> {
    let (proto, info) = cnniqa_graph(model, height, width)?;
    write_model(&proto, path)?;
    Ok(info)
}
