//! The per-op timing counters through the ops themselves. The counters are process-wide, so
//! this is the only test of its binary: no other test may run ops beside it.

use acpo_ops::attention::attention;
use acpo_ops::conv::conv2d_bias;
use acpo_ops::norm::group_norm;
use acpo_ops::timing::{self, OpClass, OpTimes};
use candle_core::{DType, Device, Tensor, Var};

fn wave(shape: &[usize], phase: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn every_op_counts_its_calls_and_time_only_while_timing_is_on() {
    let x = Var::from_tensor(&wave(&[2, 4, 5, 5], 0.0)).unwrap();
    let w = wave(&[4, 4, 3, 3], 1.0);
    let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let gamma = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
    let step = || {
        let y = conv2d_bias(x.as_tensor(), &w, &b, 1, 1).unwrap();
        let y = group_norm(&y, &gamma, &b, 2, 1e-5, true).unwrap();
        let tok = y.flatten_from(2).unwrap().transpose(1, 2).unwrap();
        let out = attention(&tok, &tok, &tok, 2).unwrap();
        out.sum_all().unwrap().backward().unwrap();
    };

    timing::enable(false);
    timing::reset();
    step();
    assert_eq!(timing::snapshot(), OpTimes::default(), "counted while off");

    timing::enable(true);
    step();
    let first = timing::snapshot();
    for class in OpClass::ALL {
        let t = first.get(class);
        assert_eq!(t.calls, 1, "{}: {t:?}", class.name());
        assert!(t.seconds > 0.0, "{}: {t:?}", class.name());
    }
    step();
    let second = timing::snapshot().since(&first);
    assert!(OpClass::ALL.iter().all(|&c| second.get(c).calls == 1));
    assert!(timing::snapshot().total_seconds() > first.total_seconds());

    timing::enable(false);
    step();
    let off = timing::snapshot();
    timing::reset();
    assert_eq!(timing::snapshot(), OpTimes::default());
    assert_eq!(
        off.get(OpClass::ConvForward).calls,
        2,
        "nothing counted after enable(false)"
    );
}
