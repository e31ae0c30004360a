//! A bad training-recipe or study param is bad input: exit 2 with the key named, before any
//! training starts.

mod common;

use common::run_stage as run;

fn diffusion(train: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "diffusion.cifar10.model": {},
        "diffusion.cifar10.schedule": {},
        "diffusion.cifar10.train": train,
    })
}

#[test]
fn an_ema_decay_outside_0_1_exits_2_naming_the_key() {
    let (code, stderr) = run(
        &diffusion(serde_json::json!({"ema_decay": 1.0})),
        "train-base@cifar10",
        &["diffusion", "train-base", "cifar10"],
    );
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("train.ema_decay") && stderr.contains("outside (0, 1)"),
        "stderr: {stderr}"
    );
}

#[test]
fn an_unknown_schedule_name_exits_2_naming_the_key() {
    let (code, stderr) = run(
        &diffusion(serde_json::json!({"lr_schedule": "cosin"})),
        "train-base@cifar10",
        &["diffusion", "train-base", "cifar10"],
    );
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("diffusion.cifar10.train") && stderr.contains("cosin"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_study_configuration_with_an_unknown_param_exits_2_naming_it() {
    let params = serde_json::json!({
        "study.configs.x": {"benchmark": "anime32", "description": "d",
                            "set": {"train": {"lr_sched": "cosine"}}},
        "study.budget_tflop": 1.0,
        "study.eval_fractions": [0.5, 1.0],
        "study.evaluate": {},
        "diffusion.anime32": {},
    });
    let (code, stderr) = run(
        &params,
        "base-study@x",
        &["eval", "base-study", "--config", "x"],
    );
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("study.configs.x.set") && stderr.contains("lr_sched"),
        "stderr: {stderr}"
    );
}

/// Fine-tuning params: an unknown draw source or DDIM spacing exits 2 naming the value, before
/// any model is read.
#[test]
fn unknown_finetune_draws_and_spacing_exit_2_naming_them() {
    for (defaults, bad) in [
        (serde_json::json!({"draws": "sideways"}), "sideways"),
        (
            serde_json::json!({"probe": {"spacing": "middle"}}),
            "middle",
        ),
    ] {
        let params = serde_json::json!({
            "finetune.defaults": defaults,
            "finetune.cifar10": {},
        });
        let (code, stderr) = run(
            &params,
            "finetune@cifar10-acpo-0",
            &[
                "finetune",
                "--benchmark",
                "cifar10",
                "--method",
                "acpo",
                "--out",
                "out",
            ],
        );
        assert_eq!(code, Some(2), "stderr: {stderr}");
        assert!(stderr.contains(bad), "stderr: {stderr}");
    }
}
