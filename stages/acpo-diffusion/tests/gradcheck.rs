//! Finite-difference gradient checks (in f64) of every building block used in training, and
//! regression tests for the two candle 0.11 gradient traps listed in `STACK.md`.

mod common;

use acpo_diffusion::nn::{
    attention, softmax_last, timestep_embedding, upsample_nearest2x, upsample_nearest2x_generic,
    Conv2d, GroupNorm, Linear,
};
use acpo_diffusion::rng::SeededRng;
use acpo_diffusion::{UNet, UNetConfig};
use candle_core::{DType, Device, Module, Tensor, Var};

type F = dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>;

fn randn(seed: u64, shape: &[usize], scale: f64) -> Tensor {
    (SeededRng::new(seed, &[])
        .normal(shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        * scale)
        .unwrap()
}

/// Largest relative error between autodiff and central differences over `k` sampled coordinates
/// of every input. `f` maps the inputs to a tensor; the checked scalar is `sum(f * r)` for a fixed
/// random `r`, so every output element contributes. A missing gradient counts as zero.
fn max_rel_err(inputs: &[Tensor], f: &F, k: usize) -> f64 {
    let out0 = f(inputs).unwrap();
    let r = randn(999, out0.dims(), 1.0);
    let scalar = |xs: &[Tensor]| -> f64 {
        f(xs)
            .unwrap()
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let vt: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = f(&vt).unwrap().mul(&r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let h = 1e-5;
    let mut worst = 0f64;
    let mut sel = SeededRng::new(5, &[]);
    for (i, v) in vars.iter().enumerate() {
        let g = match grads.get(v.as_tensor()) {
            Some(g) => g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            None => vec![0.0; v.elem_count()],
        };
        let base = inputs[i].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mut scale = 0f64;
        let mut errs = Vec::new();
        for _ in 0..k {
            let j = sel.below(base.len());
            let eval = |d: f64| {
                let mut b = base.clone();
                b[j] += d;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_vec(b, inputs[i].dims(), &Device::Cpu).unwrap();
                scalar(&xs)
            };
            let num = (eval(h) - eval(-h)) / (2.0 * h);
            scale = scale.max(num.abs()).max(g[j].abs());
            errs.push((num - g[j]).abs());
        }
        let e = errs.into_iter().fold(0.0, f64::max) / scale.max(1e-8);
        worst = worst.max(e);
    }
    worst
}

const TOL: f64 = 1e-5;

#[test]
fn conv2d_gradients() {
    for (stride, pad) in [(1, 1), (2, 1), (1, 0)] {
        let f = move |xs: &[Tensor]| {
            let c = Conv2d {
                weight: xs[1].clone(),
                bias: xs[2].clone(),
                stride,
                padding: pad,
            };
            c.forward(&xs[0])
        };
        let e = max_rel_err(
            &[
                randn(1, &[2, 3, 6, 6], 1.0),
                randn(2, &[4, 3, 3, 3], 0.3),
                randn(3, &[4], 0.1),
            ],
            &f,
            12,
        );
        assert!(e < TOL, "conv2d stride {stride} pad {pad}: rel err {e}");
    }
}

#[test]
fn conv_transpose2d_gradients() {
    let f = |xs: &[Tensor]| xs[0].conv_transpose2d(&xs[1], 1, 1, 2, 1);
    let e = max_rel_err(
        &[randn(4, &[2, 3, 4, 4], 1.0), randn(5, &[3, 2, 3, 3], 0.3)],
        &f,
        12,
    );
    assert!(e < TOL, "conv_transpose2d: rel err {e}");
}

#[test]
fn group_norm_gradients() {
    let f = |xs: &[Tensor]| {
        GroupNorm {
            weight: xs[1].clone(),
            bias: xs[2].clone(),
            groups: 2,
            eps: 1e-5,
        }
        .forward(&xs[0])
    };
    let e = max_rel_err(
        &[
            randn(6, &[2, 4, 3, 3], 2.0),
            randn(7, &[4], 1.0),
            randn(8, &[4], 1.0),
        ],
        &f,
        16,
    );
    assert!(e < TOL, "group norm: rel err {e}");
}

#[test]
fn silu_and_linear_gradients() {
    let f = |xs: &[Tensor]| {
        Linear {
            weight: xs[1].clone(),
            bias: xs[2].clone(),
        }
        .forward(&xs[0].silu()?)
    };
    let e = max_rel_err(
        &[
            randn(9, &[3, 2, 5], 1.0),
            randn(10, &[4, 5], 0.5),
            randn(11, &[4], 0.1),
        ],
        &f,
        12,
    );
    assert!(e < TOL, "silu+linear: rel err {e}");
}

#[test]
fn attention_gradients_self_and_cross() {
    // Self-attention (same length), two heads.
    let f = |xs: &[Tensor]| attention(&xs[0], &xs[1], &xs[2], 2);
    let e = max_rel_err(
        &[
            randn(12, &[2, 5, 4], 1.0),
            randn(13, &[2, 5, 4], 1.0),
            randn(14, &[2, 5, 4], 1.0),
        ],
        &f,
        12,
    );
    assert!(e < TOL, "self-attention: rel err {e}");
    // Cross-attention: keys/values from a context of another length.
    let e = max_rel_err(
        &[
            randn(15, &[2, 6, 4], 1.0),
            randn(16, &[2, 3, 4], 1.0),
            randn(17, &[2, 3, 4], 1.0),
        ],
        &f,
        12,
    );
    assert!(e < TOL, "cross-attention: rel err {e}");
    let e = max_rel_err(
        &[randn(18, &[3, 7], 2.0)],
        &|xs: &[Tensor]| softmax_last(&xs[0]),
        12,
    );
    assert!(e < TOL, "generic softmax: rel err {e}");
}

/// `STACK.md`: the fused softmax kernel returns no gradient in candle 0.11. If this test starts
/// failing, candle fixed it and `softmax_last` could use the fused kernel again.
#[test]
fn fused_softmax_has_no_gradient_regression() {
    let f = |xs: &[Tensor]| candle_nn::ops::softmax_last_dim(&xs[0]);
    let x = randn(19, &[3, 7], 2.0)
        .to_dtype(DType::F32)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let e = max_rel_err(&[x], &f, 8);
    assert!(
        e > 0.5,
        "fused softmax gradient now looks right (rel err {e}): candle fixed it"
    );
}

/// A nearest 2x upsampling function.
type Upsample = fn(&Tensor) -> candle_core::Result<Tensor>;

fn reuse_graph(up: Upsample) -> impl Fn(&[Tensor]) -> candle_core::Result<Tensor> {
    // The upsample's input also feeds another op (as in the UNet, where a tensor is both
    // upsampled and kept as a skip connection).
    move |xs: &[Tensor]| {
        let h = (&xs[0] * 1.5)?;
        let u = up(&h)?;
        let other = h.sqr()?.sum_all()?;
        u.broadcast_add(&other)
    }
}

/// `STACK.md`: candle 0.11's `upsample_nearest2d` gradient is wrong when its input is reused.
#[test]
fn candle_upsample_nearest2d_gradient_is_wrong_when_input_reused_regression() {
    fn candle_up(x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        x.upsample_nearest2d(2 * h, 2 * w)
    }
    let f = reuse_graph(candle_up);
    let e = max_rel_err(&[randn(20, &[2, 2, 3, 3], 1.0)], &f, 12);
    assert!(
        e > 0.1,
        "candle's upsample_nearest2d gradient now passes (rel err {e}): candle fixed it"
    );
}

/// The vendored candle-core (`vendor/candle-core/ACPO-PATCH.md`) stores the first gradient that
/// reaches a tensor as it is and adds the later ones: a tensor feeding several ops must still get
/// their sum, and a gradient that arrives strided (through a transpose) is stored contiguous.
#[test]
fn backprop_sums_every_gradient_that_reaches_a_tensor() {
    let x = Var::new(&[1.0f64, 2.0, 3.0], &Device::Cpu).unwrap();
    let xt = x.as_tensor();
    // y = 2x + x^2 + x: dy/dx = 3 + 2x
    let y = (((xt * 2.0).unwrap() + xt.sqr().unwrap()).unwrap() + xt).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g = grads.get(xt).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(g, [5.0, 7.0, 9.0]);

    let m = Var::new(&[[1.0f64, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let r = Tensor::new(&[[1.0f64, 10.0], [100.0, 1000.0]], &Device::Cpu).unwrap();
    let z = m
        .as_tensor()
        .t()
        .unwrap()
        .mul(&r)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = z.backward().unwrap();
    let g = grads.get(m.as_tensor()).unwrap();
    assert!(g.is_contiguous());
    assert_eq!(
        g.to_vec2::<f64>().unwrap(),
        [[1.0, 100.0], [10.0, 1000.0]],
        "the gradient of m is r transposed"
    );
}

/// The replacement: acpo-ops' CPU op (f64 here) and the generic broadcast other devices use.
#[test]
fn replacement_upsample_gradient_is_right_when_input_reused() {
    let ups: [(&str, Upsample); 2] = [
        ("upsample_nearest2x", upsample_nearest2x),
        ("upsample_nearest2x_generic", upsample_nearest2x_generic),
    ];
    for (name, up) in ups {
        let f = reuse_graph(up);
        let e = max_rel_err(&[randn(20, &[2, 2, 3, 3], 1.0)], &f, 12);
        assert!(e < TOL, "{name}: rel err {e}");
        let e = max_rel_err(
            &[randn(21, &[1, 3, 2, 4], 1.0)],
            &move |xs: &[Tensor]| up(&xs[0]),
            12,
        );
        assert!(e < TOL, "{name} alone: rel err {e}");
    }
}

#[test]
fn time_embedding_mlp_gradients() {
    let t = Tensor::new(&[3f32, 250., 999.], &Device::Cpu).unwrap();
    let emb = timestep_embedding(&t, 8)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let f = move |xs: &[Tensor]| {
        let l1 = Linear {
            weight: xs[0].clone(),
            bias: xs[1].clone(),
        };
        let l2 = Linear {
            weight: xs[2].clone(),
            bias: xs[3].clone(),
        };
        l2.forward(&l1.forward(&emb)?.silu()?)
    };
    let e = max_rel_err(
        &[
            randn(22, &[16, 8], 0.4),
            randn(23, &[16], 0.1),
            randn(24, &[16, 16], 0.3),
            randn(25, &[16], 0.1),
        ],
        &f,
        12,
    );
    assert!(e < TOL, "time embedding MLP: rel err {e}");
}

fn tiny_cfg(context: Option<usize>) -> UNetConfig {
    common::tiny_unet(context)
}

/// The whole tiny UNet (self- and cross-attention, down- and upsampling, skips) in f64: every
/// parameter gets random non-zero values (so zero-initialised layers are exercised too).
#[test]
fn whole_tiny_unet_gradients() {
    let cfg = tiny_cfg(Some(6));
    let vm = candle_nn::VarMap::new();
    let proto = UNet::new_trainable(&cfg, &vm, 0, &Device::Cpu).unwrap();
    let names: Vec<(String, Vec<usize>)> = proto
        .params()
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let mut inputs = vec![randn(30, &[2, 3, 8, 8], 1.0), randn(31, &[2, 3, 6], 1.0)];
    for (i, (_, shape)) in names.iter().enumerate() {
        inputs.push(randn(100 + i as u64, shape, 0.3));
    }
    let t = Tensor::new(&[10f32, 700.], &Device::Cpu).unwrap();
    let cfg2 = cfg.clone();
    let f = move |xs: &[Tensor]| {
        let map = names
            .iter()
            .zip(&xs[2..])
            .map(|((n, _), t)| (n.clone(), t.clone()))
            .collect();
        let m = UNet::from_tensors(&cfg2, map).map_err(candle_core::Error::wrap)?;
        m.forward(&xs[0], &t, Some(&xs[1]))
    };
    let e = max_rel_err(&inputs, &f, 3);
    assert!(e < 1e-4, "whole UNet: rel err {e}");
}

#[test]
fn gemm_conv_matches_candle_conv_and_has_right_gradients() {
    use acpo_diffusion::conv::conv2d as conv2d_unfold;
    for (k, stride, pad) in [(3, 1, 1), (3, 2, 1), (1, 1, 0), (3, 1, 0)] {
        let x = randn(40, &[2, 3, 6, 6], 1.0);
        let w = randn(41, &[4, 3, k, k], 0.3);
        let a = conv2d_unfold(&x, &w, pad, stride).unwrap();
        let b = x.conv2d(&w, pad, stride, 1, 1).unwrap();
        assert_eq!(a.dims(), b.dims());
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            d < 1e-10,
            "k {k} stride {stride} pad {pad}: forward differs by {d}"
        );
        let f = move |xs: &[Tensor]| conv2d_unfold(&xs[0], &xs[1], pad, stride);
        let e = max_rel_err(&[x, w], &f, 12);
        assert!(
            e < TOL,
            "gemm conv k {k} stride {stride} pad {pad}: rel err {e}"
        );
    }
}

#[test]
fn fused_group_norm_silu_gradients() {
    let f = |xs: &[Tensor]| {
        GroupNorm {
            weight: xs[1].clone(),
            bias: xs[2].clone(),
            groups: 2,
            eps: 1e-5,
        }
        .forward_silu(&xs[0])
    };
    let e = max_rel_err(
        &[
            randn(16, &[3, 4, 3, 3], 2.0),
            randn(17, &[4], 1.0),
            randn(18, &[4], 1.0),
        ],
        &f,
        16,
    );
    assert!(e < TOL, "group norm + silu: rel err {e}");
}

#[test]
fn conv_with_bias_gradients_for_one_image_and_for_runs_of_images() {
    use acpo_diffusion::conv::conv2d_bias;
    // Batch 1 threads inside gemm; batch 20 sums the weight gradient over runs of 2 images.
    for (batch, k, stride, pad) in [(1, 3, 1, 1), (20, 3, 2, 2), (20, 1, 1, 0)] {
        let f = move |xs: &[Tensor]| conv2d_bias(&xs[0], &xs[1], &xs[2], pad, stride);
        let e = max_rel_err(
            &[
                randn(50, &[batch, 3, 5, 5], 1.0),
                randn(51, &[4, 3, k, k], 0.3),
                randn(52, &[4], 0.1),
            ],
            &f,
            8,
        );
        assert!(e < TOL, "conv batch {batch} k {k}: rel err {e}");
    }
}

#[test]
fn conv_norm_and_attention_gradients_do_not_depend_on_the_thread_count() {
    use acpo_diffusion::conv::conv2d_bias;
    let grads = |threads: usize| -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let f32t = |t: Tensor| t.to_dtype(DType::F32).unwrap();
            let x = Var::from_tensor(&f32t(randn(60, &[37, 8, 6, 6], 1.0))).unwrap();
            let w = Var::from_tensor(&f32t(randn(61, &[8, 8, 3, 3], 0.3))).unwrap();
            let b = Var::from_tensor(&f32t(randn(62, &[8], 0.1))).unwrap();
            let gn = GroupNorm {
                weight: f32t(randn(63, &[8], 1.0)),
                bias: f32t(randn(64, &[8], 1.0)),
                groups: 4,
                eps: 1e-5,
            };
            let y = conv2d_bias(&gn.forward_silu(x.as_tensor()).unwrap(), &w, &b, 1, 1).unwrap();
            // Self-attention over the 36 pixels of each image, two heads.
            let tok = y.flatten_from(2).unwrap().transpose(1, 2).unwrap();
            let y = (attention(&tok, &tok, &tok, 2).unwrap() + &tok).unwrap();
            let r = f32t(randn(65, y.dims(), 1.0));
            let g = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            [x.as_tensor(), w.as_tensor(), b.as_tensor()]
                .iter()
                .map(|v| g.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                .collect()
        })
    };
    let one = grads(1);
    assert_eq!(one, grads(2));
    assert_eq!(one, grads(3));
}
