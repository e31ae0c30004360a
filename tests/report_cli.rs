//! The binary maps bad evaluation and report params to exit code 2 with a message naming the
//! param.

mod common;

/// `acpo stage report ...` (aggregate, study-report).
fn run_stage(params: &serde_json::Value, stage: &str, args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<&str> = ["report"].iter().chain(args).copied().collect();
    common::run_stage(params, stage, &args)
}

/// `acpo stage eval ...` (evaluate, evaluate-steps, base-study).
fn run_eval(params: &serde_json::Value, stage: &str, args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<&str> = ["eval"].iter().chain(args).copied().collect();
    common::run_stage(params, stage, &args)
}

#[test]
fn wrong_param_type_is_bad_input_exit_2() {
    let params = serde_json::json!({ "report.evaluate": { "samples": "many" } });
    let (code, stderr) = run_eval(&params, "evaluate", &["evaluate", "--benchmark", "cifar10"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("report.evaluate") && stderr.contains("wrong type"),
        "stderr: {stderr}"
    );
}

#[test]
fn step_study_of_unknown_benchmark_is_bad_input_exit_2() {
    let params = serde_json::json!({
        "report.benchmarks": ["cifar10"],
        "report.runs": [],
        "report.step_study": { "x-few": { "benchmark": "nope", "steps": 10, "runs": [] } },
        "report.headline": {},
        "report.allow_dirty": false,
    });
    let (code, stderr) = run_stage(&params, "aggregate", &["aggregate", "--out", "reports"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("report.step_study.x-few") && stderr.contains("`nope`"),
        "stderr: {stderr}"
    );
}

#[test]
fn undeclared_step_study_is_named() {
    let params = serde_json::json!({ "report.evaluate": {} });
    let (code, stderr) = run_eval(
        &params,
        "evaluate-steps",
        &["evaluate-steps", "--study", "x"],
    );
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("report.step_study.x") && stderr.contains("does not declare"),
        "stderr: {stderr}"
    );
}

/// Intervals across seeds need two seeds: asking for fewer is bad input naming the key, found
/// before any metrics file is read.
#[test]
fn a_headline_with_fewer_than_two_seeds_is_bad_input_exit_2() {
    let params = serde_json::json!({
        "report.benchmarks": ["cifar10"],
        "report.runs": ["acpo-s0"],
        "report.step_study": {},
        "report.headline": { "min_seeds": 1 },
        "report.allow_dirty": false,
    });
    let (code, stderr) = run_stage(&params, "aggregate", &["aggregate", "--out", "reports"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("report.headline.min_seeds") && stderr.contains("at least 2 seeds"),
        "stderr: {stderr}"
    );
}

#[test]
fn an_unknown_ddim_spacing_is_bad_input_exit_2() {
    let params = serde_json::json!({ "report.evaluate": { "spacing": "middle" } });
    let (code, stderr) = run_eval(&params, "evaluate", &["evaluate", "--benchmark", "cifar10"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("report.evaluate") && stderr.contains("middle"),
        "stderr: {stderr}"
    );
}

/// A report built from a working tree that differs from its commit cannot be traced to one:
/// refused (exit 2, naming the files and the way out) unless `report.allow_dirty`; the files a
/// run writes itself (pipeline.lock, reports/) do not count. Before, the report only said
/// "with uncommitted changes", whatever they were.
#[test]
fn a_report_from_a_changed_tree_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("reports")).unwrap();
    for f in ["pipeline.lock", "params.yaml", "reports/index.html"] {
        std::fs::write(dir.join(f), "1\n").unwrap();
    }
    common::git(dir, &["init", "-q"]);
    common::git(dir, &["add", "."]);
    common::git(dir, &["commit", "-q", "-m", "first"]);
    let aggregate = |allow: bool| {
        let params = serde_json::json!({
            "report.benchmarks": ["cifar10"],
            "report.runs": [],
            "report.step_study": {},
            "report.headline": {},
            "report.allow_dirty": allow,
        });
        common::run_stage_in(
            dir,
            &params,
            "aggregate",
            &["report", "aggregate", "--out", "reports"],
        )
    };
    // What a run writes does not count: the check passes (and the stage goes on to fail on
    // the missing evaluations, which is not what this test is about).
    for f in ["pipeline.lock", "reports/index.html"] {
        std::fs::write(dir.join(f), "2\n").unwrap();
    }
    let (_, stderr) = aggregate(false);
    assert!(!stderr.contains("working tree differs"), "{stderr}");
    // A changed tracked file is refused, naming it and both ways out.
    std::fs::write(dir.join("params.yaml"), "2\n").unwrap();
    let (code, stderr) = aggregate(false);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the working tree differs from commit")
            && stderr.contains("in params.yaml (tracked files")
            && stderr.contains("report.allow_dirty: true"),
        "{stderr}"
    );
    let (_, stderr) = aggregate(true);
    assert!(!stderr.contains("working tree differs"), "{stderr}");
}
