//! The FID Inception-v3 as an ONNX graph, run by ONNX Runtime (issue 15: the pipeline's
//! Inception forward at ONNX Runtime's speed; `just bench` measured 4.7x candle's on 2 cores,
//! features equal to 4e-6).
//!
//! [`export_onnx`] reads the weights the `fid-weights` stage converted
//! (`results/fid/inception-fid.safetensors`), folds each batch norm into its convolution as
//! [`InceptionV3`] does (`w / sqrt(var + 0.001)`, bias `beta - mean / sqrt(var + 0.001)`), and
//! writes the graph with acpo-iqa's ONNX writer: Conv+Relu per layer, max pools, average pools
//! that exclude the padding (`count_include_pad = 0`), the 3x3 max pool of `mixed_10`, Concat,
//! and a global average pool to `[N, 2048]`. Its input is the pre-processed batch
//! (`[N, 3, 299, 299]`, [`InceptionV3::preprocess`]), so resizing and scaling stay the candle
//! code's and both back ends see the same numbers. [`InceptionV3::load_onnx`] makes an
//! extractor that runs its forward through the exported graph alone.

use std::collections::HashMap;
use std::path::Path;

use acpo_iqa::onnx::export::{attr_int, attr_ints, write_model, Dim, GraphBuilder};
use candle_core::{DType, Device, Tensor};

use crate::error::{FidError, Result};

const BN_EPS: f64 = 0.001;

struct Export<'a> {
    g: GraphBuilder,
    path: &'a Path,
    tensors: &'a HashMap<String, Tensor>,
    meta: &'a HashMap<String, String>,
}

impl Export<'_> {
    fn ints(&self, key: &str) -> Result<Vec<i64>> {
        let s = self
            .meta
            .get(key)
            .ok_or_else(|| self.bad(format!("missing metadata {key}")))?;
        s.split(',')
            .map(|v| v.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.bad(format!("metadata {key} = {s:?}: {e}")))
    }

    fn bad(&self, msg: String) -> FidError {
        FidError::Weights {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    /// conv (batch norm folded) -> ReLU.
    fn conv(&mut self, name: &str, x: &str) -> Result<String> {
        let t = |k: &str| -> Result<Tensor> {
            Ok(self
                .tensors
                .get(&format!("{name}.{k}"))
                .ok_or_else(|| self.bad(format!("missing {name}.{k}")))?
                .to_dtype(DType::F32)?)
        };
        let (w, beta, mean, var) = (t("weight")?, t("beta")?, t("mean")?, t("var")?);
        let c_out = w.dim(0)?;
        let scale = (var + BN_EPS)?.sqrt()?.recip()?;
        let w = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let b = (beta - mean.mul(&scale)?)?;
        let stride = self.ints(&format!("{name}.stride"))?[0];
        let (ph, pw) = match self.ints(&format!("{name}.padding"))?.as_slice() {
            [p] => (*p, *p),
            [ph, pw] => (*ph, *pw),
            other => return Err(self.bad(format!("{name}.padding = {other:?}"))),
        };
        let wn = self.g.init_tensor(&format!("{name}.w"), &w)?;
        let bn = self.g.init_tensor(&format!("{name}.b"), &b)?;
        let y = self.g.node(
            "Conv",
            &[x, &wn, &bn],
            vec![
                attr_ints("strides", &[stride, stride]),
                attr_ints("pads", &[ph, pw, ph, pw]),
            ],
        );
        Ok(self.g.node("Relu", &[&y], vec![]))
    }

    fn seq(&mut self, prefix: &str, n: usize, x: &str) -> Result<String> {
        let mut y = x.to_string();
        for i in 0..n {
            let name = if i == 0 {
                format!("{prefix}.conv")
            } else {
                format!("{prefix}.conv_{i}")
            };
            y = self.conv(&name, &y)?;
        }
        Ok(y)
    }

    fn max_pool(&mut self, x: &str, stride: i64, pad: i64) -> String {
        self.g.node(
            "MaxPool",
            &[x],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[stride, stride]),
                attr_ints("pads", &[pad, pad, pad, pad]),
            ],
        )
    }

    /// 3x3, stride 1, padding 1, the padding not counted.
    fn avg_pool_excl(&mut self, x: &str) -> String {
        self.g.node(
            "AveragePool",
            &[x],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[1, 1]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_int("count_include_pad", 0),
            ],
        )
    }

    fn cat(&mut self, parts: &[String]) -> String {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.g.node("Concat", &refs, vec![attr_int("axis", 1)])
    }

    fn block_a(&mut self, p: &str, x: &str) -> Result<String> {
        let a = self.conv(&format!("{p}.conv"), x)?;
        let b = self.seq(&format!("{p}.tower"), 2, x)?;
        let c = self.seq(&format!("{p}.tower_1"), 3, x)?;
        let pooled = self.avg_pool_excl(x);
        let d = self.conv(&format!("{p}.tower_2.conv"), &pooled)?;
        Ok(self.cat(&[a, b, c, d]))
    }

    fn block_b(&mut self, p: &str, x: &str) -> Result<String> {
        let a = self.conv(&format!("{p}.conv"), x)?;
        let b = self.seq(&format!("{p}.tower"), 3, x)?;
        let c = self.max_pool(x, 2, 0);
        Ok(self.cat(&[a, b, c]))
    }

    fn block_c(&mut self, p: &str, x: &str) -> Result<String> {
        let a = self.conv(&format!("{p}.conv"), x)?;
        let b = self.seq(&format!("{p}.tower"), 3, x)?;
        let c = self.seq(&format!("{p}.tower_1"), 5, x)?;
        let pooled = self.avg_pool_excl(x);
        let d = self.conv(&format!("{p}.tower_2.conv"), &pooled)?;
        Ok(self.cat(&[a, b, c, d]))
    }

    fn block_d(&mut self, p: &str, x: &str) -> Result<String> {
        let a = self.seq(&format!("{p}.tower"), 2, x)?;
        let b = self.seq(&format!("{p}.tower_1"), 4, x)?;
        let c = self.max_pool(x, 2, 0);
        Ok(self.cat(&[a, b, c]))
    }

    fn block_e(&mut self, p: &str, x: &str, max_pool: bool) -> Result<String> {
        let c0 = self.conv(&format!("{p}.conv"), x)?;
        let a = self.conv(&format!("{p}.tower_conv"), x)?;
        let a0 = self.conv(&format!("{p}.tower_mixed_conv"), &a)?;
        let a1 = self.conv(&format!("{p}.tower_mixed_conv_1"), &a)?;
        let b = self.conv(&format!("{p}.tower_1_conv"), x)?;
        let b = self.conv(&format!("{p}.tower_1_conv_1"), &b)?;
        let b0 = self.conv(&format!("{p}.tower_1_mixed_conv"), &b)?;
        let b1 = self.conv(&format!("{p}.tower_1_mixed_conv_1"), &b)?;
        let pooled = if max_pool {
            self.max_pool(x, 1, 1)
        } else {
            self.avg_pool_excl(x)
        };
        let d = self.conv(&format!("{p}.tower_2_conv"), &pooled)?;
        Ok(self.cat(&[c0, a0, a1, b0, b1, d]))
    }
}

/// Writes the FID Inception-v3 (input: pre-processed `[N, 3, 299, 299]`) as ONNX.
pub fn export_onnx(weights: &Path, out: &Path) -> Result<()> {
    let (tensors, meta) = crate::torchscript::load_weights(weights, &Device::Cpu)?;
    let mut e = Export {
        g: GraphBuilder::default(),
        path: weights,
        tensors: &tensors,
        meta: &meta,
    };
    let mut x = e.conv("conv", "x")?;
    x = e.conv("conv_1", &x)?;
    x = e.conv("conv_2", &x)?;
    x = e.max_pool(&x, 2, 0);
    x = e.conv("conv_3", &x)?;
    x = e.conv("conv_4", &x)?;
    x = e.max_pool(&x, 2, 0);
    for p in ["mixed", "mixed_1", "mixed_2"] {
        x = e.block_a(p, &x)?;
    }
    x = e.block_b("mixed_3", &x)?;
    for p in ["mixed_4", "mixed_5", "mixed_6", "mixed_7"] {
        x = e.block_c(p, &x)?;
    }
    x = e.block_d("mixed_8", &x)?;
    x = e.block_e("mixed_9", &x, false)?;
    x = e.block_e("mixed_10", &x, true)?;
    let pooled = e.g.node("GlobalAveragePool", &[&x], vec![]);
    e.g.node_named("Flatten", &[&pooled], vec![attr_int("axis", 1)], "features");
    let model = e.g.finish(
        "fid_inception_v3",
        (
            "x",
            &[
                Dim::Named("n"),
                Dim::Fixed(3),
                Dim::Fixed(299),
                Dim::Fixed(299),
            ],
        ),
        ("features", &[Dim::Named("n"), Dim::Fixed(2048)]),
        &[],
        "FID Inception-v3 (TF-2015 pool_3), exported by acpo-fid from the fid-weights stage's file",
    );
    write_model(&model, out)?;
    Ok(())
}
