//! The `acpo` command: pipeline engine commands (`repro`, `status`, ...) and
//! the `stage` subcommands that `pipeline.yaml` commands call.
//!
//! This is the only place that uses `anyhow` and maps errors to exit codes.

mod glue;

use acpo_pipeline::{commands, metrics, remote, table, timing};
use acpo_pipeline::{ErrorKind, ReproSettings, Workspace};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "acpo", version, about = "Reproducible ACPO research pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by the engine commands: where the pipeline is and which params.
#[derive(Debug, Clone, Args)]
struct PipelineArgs {
    /// Params profile: `params.yaml` plus the overlay `profiles/<PROFILE>.yaml`.
    #[arg(long, short = 'P', default_value = "cpu", env = "ACPO_PROFILE")]
    profile: String,
    /// Override one param: `-S train.lr=1e-4` (the value is parsed as YAML).
    #[arg(long = "set-param", short = 'S', value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Directory of `pipeline.yaml` (default: the current directory).
    #[arg(long, short = 'C', value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// The pipeline file (default: `pipeline.yaml`, else `dvc.yaml`); a path sets the
    /// directory too. Its lock is `pipeline.lock`, or `<stem>.acpo.lock` for another file.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

impl PipelineArgs {
    /// The pipeline directory and the file name in it (`--file dir/dvc.yaml` is `-C dir`).
    fn location(&self) -> (PathBuf, Option<String>) {
        match &self.file {
            None => (self.dir.clone(), None),
            Some(f) => {
                let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
                let dir = match f.parent() {
                    Some(p) if !p.as_os_str().is_empty() => self.dir.join(p),
                    _ => self.dir.clone(),
                };
                (dir, name)
            }
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the stages that are not up to date (and what they need).
    Repro {
        /// Stages to bring up to date: full names (`train@cifar10`) or base names (`train`).
        stages: Vec<String>,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Run the selected stages even when they are up to date.
        #[arg(long, short = 'f')]
        force: bool,
        /// Also run every stage downstream of the named ones.
        #[arg(long)]
        downstream: bool,
        /// Only the named stages, not what they depend on.
        #[arg(long, short = 's')]
        single: bool,
        /// Say what would run, run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run up to N independent stages at once (within their declared resources).
        #[arg(long, short = 'j', default_value_t = 1)]
        jobs: usize,
        /// After a failure, go on with stages that do not depend on the failed one.
        #[arg(long, short = 'k')]
        keep_going: bool,
        /// Fetch a stage whose key the remote has (verified) instead of running it.
        #[arg(long)]
        pull: bool,
        /// The remote for --pull (default: `default:` of .acpo/config.yaml).
        #[arg(long, short = 'r', value_name = "NAME", requires = "pull")]
        remote: Option<String>,
        /// Where stages run: `local` (here) or `slurm` (sbatch; the directory must be on a
        /// file system the nodes share).
        #[arg(long, value_name = "KIND", default_value = "local")]
        executor: String,
        /// Slurm partition (default: the cluster's default).
        #[arg(long, value_name = "NAME")]
        partition: Option<String>,
        /// Slurm time limit in minutes for a stage without `resources.time_min`.
        #[arg(long, value_name = "MINUTES", default_value_t = 24 * 60)]
        time_min: u64,
    },
    /// Which stages are up to date, and for the others why not (old -> new).
    Status {
        stages: Vec<String>,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Also say whether a remote has each stage's current key (the config's default
        /// remote, or the one named).
        #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
        remote: Option<String>,
    },
    /// Copy the runs pipeline.lock records (entries and output objects) to a remote.
    Push {
        /// Stages (all when none are named).
        stages: Vec<String>,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// The remote (default: `default:` of .acpo/config.yaml).
        #[arg(long, short = 'r', value_name = "NAME")]
        remote: Option<String>,
    },
    /// Fetch the runs pipeline.lock records from a remote into the run cache (verified), so
    /// `repro` restores them.
    Pull {
        /// Stages (all when none are named).
        stages: Vec<String>,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// The remote (default: `default:` of .acpo/config.yaml).
        #[arg(long, short = 'r', value_name = "NAME")]
        remote: Option<String>,
    },
    /// The stage graph, as text or Mermaid.
    Dag {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Print a Mermaid flowchart.
        #[arg(long)]
        mermaid: bool,
    },
    /// Every input of a stage's key, and its lock and run-cache state.
    Explain {
        stage: String,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Show metrics files, or compare them with a git revision or each stage's previous run.
    #[command(subcommand)]
    Metrics(MetricsCommand),
    /// Compare params with a git revision.
    #[command(subcommand)]
    Params(ParamsCommand),
    /// Write every declared plots file to one HTML page (charts of CSV/TSV/JSON data, images).
    Plots {
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[command(flatten)]
        targets: TargetArgs,
        /// The page to write.
        #[arg(long, short = 'o', default_value = ".acpo/plots/index.html")]
        out: PathBuf,
    },
    /// Where the recorded run time went: stage wall times from pipeline.lock per stage group
    /// and per phase (training, sampling, judging, FID, ... as each stage's `timing:` says).
    Times {
        /// Stages (all when none are named): full names or base names.
        stages: Vec<String>,
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[command(flatten)]
        format: FormatArgs,
        /// Write the Markdown tables into this document (relative to the pipeline directory),
        /// between its lines `<!-- begin: acpo times -->` and `<!-- end: acpo times -->`.
        #[arg(long, value_name = "FILE")]
        into: Option<PathBuf>,
    },
    /// Remove run-cache entries not used by pipeline.lock, and unused objects.
    Gc {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the run cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Run the work of one stage directly (this is what `pipeline.yaml` commands call).
    #[command(subcommand)]
    Stage(glue::StageCommand),
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Hash every run-cache object and compare it with its name; exit 1 when any is corrupt.
    Verify {
        /// Directory of `pipeline.yaml` (default: the current directory).
        #[arg(long, short = 'C', value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
}

/// How a table is printed (default: aligned text).
#[derive(Debug, Clone, Args)]
#[group(multiple = false)]
struct FormatArgs {
    /// Print a Markdown table.
    #[arg(long)]
    md: bool,
    /// Print CSV.
    #[arg(long)]
    csv: bool,
    /// Print JSON (an array of rows).
    #[arg(long)]
    json: bool,
}

/// A table's format, and whether to show every value.
#[derive(Debug, Clone, Args)]
struct TableArgs {
    #[command(flatten)]
    format: FormatArgs,
    /// Every value, not only numbers (metrics) or changes (diffs).
    #[arg(long, short = 'a')]
    all: bool,
}

/// Which metrics files.
#[derive(Debug, Clone, Args)]
struct TargetArgs {
    /// Only these metrics files, or those under these directories (repeatable).
    #[arg(long = "targets", short = 't', value_name = "PATH", num_args = 1..)]
    targets: Vec<String>,
}

impl TableArgs {
    fn format(&self) -> table::Format {
        self.format.format()
    }
}

impl FormatArgs {
    fn format(&self) -> table::Format {
        match (self.md, self.csv, self.json) {
            (true, _, _) => table::Format::Markdown,
            (_, true, _) => table::Format::Csv,
            (_, _, true) => table::Format::Json,
            _ => table::Format::Text,
        }
    }
}

#[derive(Debug, Subcommand)]
enum MetricsCommand {
    /// The declared metrics files as a table (path, metric, value): numbers only unless --all.
    Show {
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Metrics that changed: against a git revision's results (its pipeline.lock, outputs from
    /// the run cache), or without one against each stage's previous run in the run cache.
    Diff {
        /// A git revision (`HEAD`, `HEAD~1`, a tag or commit).
        rev: Option<String>,
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        table: TableArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ParamsCommand {
    /// Params that differ between a git revision and the workspace (profile and -S applied to both).
    Diff {
        /// A git revision (default `HEAD`).
        #[arg(default_value = "HEAD")]
        rev: String,
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[command(flatten)]
        table: TableArgs,
    },
}

/// The locations this project's stages read, when the environment does not set them: the
/// data mirror `<pipeline dir>/../shared/data`, the assets `<pipeline dir>/.cache/assets` and
/// ONNX Runtime inside them, as the Justfile sets them. A stage key holds an absolute path
/// relative to the pipeline directory, so `acpo` alone computes the keys `just` does.
fn default_locations(dir: &std::path::Path) {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return;
    };
    let set = |name: &str, value: std::path::PathBuf| {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    };
    set("ACPO_MIRROR", dir.join("../shared/data"));
    set("ACPO_ASSETS", dir.join(".cache/assets"));
    let assets = std::env::var_os("ACPO_ASSETS").map(std::path::PathBuf::from);
    if let Some(a) = assets {
        set("ORT_DYLIB_PATH", a.join("onnxruntime/libonnxruntime.so"));
    }
}

fn open(p: &PipelineArgs) -> anyhow::Result<Workspace> {
    let (dir, file) = p.location();
    default_locations(&dir);
    Ok(Workspace::open_file(
        &dir,
        file.as_deref(),
        &p.profile,
        &p.set,
    )?)
}

/// The command line, shell-quoted, that repeats this run (and so resumes it).
fn resume_command() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=@:,+%".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Repro {
            stages,
            pipeline,
            force,
            downstream,
            single,
            dry_run,
            jobs,
            keep_going,
            pull,
            remote,
            executor,
            partition,
            time_min,
        } => {
            let slurm = match executor.as_str() {
                "local" => None,
                "slurm" => Some(acpo_pipeline::slurm::SlurmSettings {
                    partition,
                    time_min,
                }),
                other => {
                    return Err(acpo_pipeline::Error::Usage(format!(
                        "--executor `{other}`: expected `local` or `slurm`"
                    ))
                    .into())
                }
            };
            let (root, file) = pipeline.location();
            default_locations(&root);
            let settings = ReproSettings {
                root,
                file,
                profile: pipeline.profile,
                overrides: pipeline.set,
                targets: stages,
                force,
                downstream,
                single,
                dry_run,
                jobs: jobs.max(1),
                keep_going,
                resume_command: resume_command(),
                progress: true,
                pull: pull.then(|| remote.unwrap_or_default()),
                slurm,
            };
            let s = acpo_pipeline::repro(&settings)?;
            let anything_done = !s.ran.is_empty() || !s.restored.is_empty();
            if anything_done && !dry_run {
                print_run_time(&settings, &s);
            }
            if dry_run {
                eprintln!(
                    "dry run: {} stage(s) would run or be restored, {} up to date",
                    s.would_run.len(),
                    s.up_to_date.len()
                );
            } else {
                eprintln!(
                    "{} ran, {} restored from the run cache, {} up to date",
                    s.ran.len(),
                    s.restored.len(),
                    s.up_to_date.len()
                );
            }
        }
        Command::Status {
            stages,
            pipeline,
            remote,
        } => {
            let mut ws = open(&pipeline)?;
            let store = match &remote {
                None => None,
                Some(r) => Some(remote::open(
                    &ws.root,
                    Some(r.as_str()).filter(|r| !r.is_empty()),
                )?),
            };
            let st = commands::status(&mut ws, &stages, store.as_deref())?;
            print!("{}", commands::format_status(&st));
        }
        Command::Push {
            stages,
            pipeline,
            remote: name,
        } => {
            let ws = open(&pipeline)?;
            let store = remote::open(&ws.root, name.as_deref())?;
            let t = remote::push(&ws, store.as_ref(), &stages)?;
            print_transfer(&t, "pushed to", &store.url());
        }
        Command::Pull {
            stages,
            pipeline,
            remote: name,
        } => {
            let ws = open(&pipeline)?;
            let store = remote::open(&ws.root, name.as_deref())?;
            let t = remote::pull(&ws, store.as_ref(), &stages)?;
            print_transfer(&t, "pulled from", &store.url());
            if !t.corrupt.is_empty() {
                for (stage, what) in &t.corrupt {
                    eprintln!("{stage}: not pulled: {what}");
                }
                anyhow::bail!("{} corrupt run(s) on the remote, not used", t.corrupt.len());
            }
        }
        Command::Dag { pipeline, mermaid } => {
            let ws = open(&pipeline)?;
            print!("{}", commands::dag(&ws, mermaid));
            // Fields read but not acted on go to stderr, so a Mermaid chart stays clean.
            eprint!("{}", commands::ignored(&ws));
        }
        Command::Explain { stage, pipeline } => {
            print!("{}", commands::explain(&mut open(&pipeline)?, &stage)?);
        }
        Command::Metrics(MetricsCommand::Show {
            pipeline,
            targets,
            table,
        }) => {
            let t = metrics::metrics_show(&open(&pipeline)?, &targets.targets, table.all)?;
            print_table(&t, &table, "no metrics files yet");
        }
        Command::Metrics(MetricsCommand::Diff {
            rev,
            pipeline,
            targets,
            table,
        }) => {
            let baseline = match rev {
                Some(r) => metrics::Baseline::Revision(r),
                None => metrics::Baseline::PreviousRun,
            };
            let (t, missing) =
                metrics::metrics_diff(&open(&pipeline)?, &baseline, &targets.targets, table.all)?;
            print_table(&t, &table, "no metric changed");
            for m in missing {
                eprintln!("{m}: no earlier version found (not run then, or its run-cache entry was collected)");
            }
        }
        Command::Params(ParamsCommand::Diff {
            rev,
            pipeline,
            table,
        }) => {
            let t = metrics::params_diff(&open(&pipeline)?, &rev, table.all)?;
            print_table(&t, &table, "no param changed");
        }
        Command::Times {
            stages,
            pipeline,
            format,
            into,
        } => {
            let ws = open(&pipeline)?;
            let names: Vec<String> = if stages.is_empty() {
                Vec::new()
            } else {
                let sel = ws.pipeline.select(&stages, false, true)?;
                sel.iter()
                    .map(|&i| ws.pipeline.stages[i].name.clone())
                    .collect()
            };
            let t = timing::times(&ws, &names);
            match into {
                Some(doc) => {
                    let doc = if doc.is_absolute() {
                        doc
                    } else {
                        ws.root.join(doc)
                    };
                    timing::write_into(&t, &doc)?;
                    eprintln!("{}: {}", doc.display(), timing::headline(&t));
                }
                None => print!("{}", timing::render(&t, format.format())),
            }
        }
        Command::Plots {
            pipeline,
            targets,
            out,
        } => {
            let ws = open(&pipeline)?;
            let out = if out.is_absolute() {
                out
            } else {
                ws.root.join(out)
            };
            let dir = out
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| ws.root.clone());
            let (page, shown) = acpo_pipeline::plots::plots_html(&ws, &targets.targets, &dir)?;
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            acpo_pipeline::fsutil::write_atomic(&out, page.as_bytes())?;
            println!("{shown} plots file(s) -> {}", out.display());
        }
        Command::Gc { pipeline, dry_run } => {
            print!("{}", commands::gc(&mut open(&pipeline)?, dry_run)?);
        }
        Command::Cache(CacheCommand::Verify { dir }) => {
            let report = commands::cache_verify(&dir)?;
            print!("{}", commands::format_cache_verify(&report));
            if !report.corrupt.is_empty() {
                anyhow::bail!(
                    "{} corrupt object(s) in the run cache",
                    report.corrupt.len()
                );
            }
        }
        Command::Stage(cmd) => glue::run(cmd).context("stage failed")?,
    }
    Ok(())
}

/// Says what a push or pull moved, and what it skipped and why.
fn print_transfer(t: &remote::Transfer, verb: &str, url: &str) {
    for (stage, why) in &t.skipped {
        eprintln!("{stage}: skipped ({why})");
    }
    println!(
        "{} run(s) {verb} {url}: {} object(s), {:.1} MiB",
        t.runs.len(),
        t.objects,
        t.bytes as f64 / 1048576.0
    );
}

/// Prints a table in the chosen format; an empty one as `empty` on stderr in text form (a
/// machine format still gets its header or `[]`).
/// After a run: the recorded time of the stages it covered, per group and phase (stderr).
fn print_run_time(settings: &ReproSettings, s: &acpo_pipeline::ReproSummary) {
    let names: Vec<String> = [&s.ran, &s.restored, &s.up_to_date]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    match Workspace::open_file(
        &settings.root,
        settings.file.as_deref(),
        &settings.profile,
        &settings.overrides,
    ) {
        Ok(ws) => eprint!(
            "\n{}",
            timing::render(&timing::times(&ws, &names), table::Format::Text)
        ),
        Err(e) => eprintln!("(run time not shown: {e})"),
    }
}

fn print_table(t: &table::Table, args: &TableArgs, empty: &str) {
    let format = args.format();
    if t.is_empty() && format == table::Format::Text {
        eprintln!("{empty}");
    } else {
        print!("{}", t.render(format));
    }
}

/// Puts the directory of this executable first on PATH, so stage commands that say
/// `acpo stage ...` run this same binary even when it is not installed.
fn put_self_on_path() {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
    else {
        return;
    };
    let mut paths = vec![dir];
    if let Some(old) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    if let Ok(joined) = std::env::join_paths(paths) {
        // Single-threaded here, before any work starts.
        std::env::set_var("PATH", joined);
    }
}

fn main() -> ExitCode {
    // Stages allocate activation-sized buffers every step and run candle ops beside rayon's:
    // keep freed memory for reuse, leave candle's own thread pool empty
    // (acpo_diffusion::startup has the measurements). First: it may set a variable.
    acpo_diffusion::startup::tune_cpu_process();
    put_self_on_path();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The one place that maps errors to exit codes: 2 bad input (pipeline, params, command
/// line, and every stage crate's input errors: `acpo_core::exit`), 1 a stage or the work
/// itself failed, 130 interrupted (SIGINT/SIGTERM).
fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<glue::params::BadParam>().is_some() || stage_bad_input(err) {
        return 2;
    }
    match err.downcast_ref::<acpo_pipeline::Error>().map(|e| e.kind()) {
        Some(ErrorKind::BadInput) => 2,
        Some(ErrorKind::Interrupted) => 130,
        Some(ErrorKind::StageFailed) | Some(ErrorKind::Io) | None => 1,
    }
}

/// Whether `err` is a stage crate's error that is bad input (`acpo_core::BadInput`).
fn stage_bad_input(err: &anyhow::Error) -> bool {
    fn is<E>(err: &anyhow::Error) -> bool
    where
        E: acpo_core::BadInput + std::fmt::Display + std::fmt::Debug + Send + Sync + 'static,
    {
        err.downcast_ref::<E>().is_some_and(|e| e.is_bad_input())
    }
    is::<acpo_data::DataError>(err)
        || is::<acpo_diffusion::DiffusionError>(err)
        || is::<acpo_fid::FidError>(err)
        || is::<acpo_iqa::IqaError>(err)
        || is::<acpo_finetune::FinetuneError>(err)
        || is::<acpo_report::ReportError>(err)
        || is::<acpo_text::TextError>(err)
        || is::<acpo_sd::SdError>(err)
        || is::<acpo_core::AtomicError>(err)
}

#[cfg(test)]
mod tests {
    use super::exit_code;

    /// One input error and one failure of every stage crate, through `anyhow` as the stage
    /// commands return them (with context added, as the glue does).
    #[test]
    fn every_stage_crate_maps_input_errors_to_2_and_failures_to_1() {
        let io = || std::io::Error::other("disk");
        let cases: Vec<(&str, anyhow::Error, u8)> = vec![
            (
                "data input",
                acpo_data::DataError::Config("x".into()).into(),
                2,
            ),
            (
                "diffusion input",
                acpo_diffusion::DiffusionError::Config {
                    field: "f".into(),
                    msg: "m".into(),
                }
                .into(),
                2,
            ),
            (
                "diffusion failure",
                acpo_diffusion::DiffusionError::Io {
                    path: "p".into(),
                    source: io(),
                }
                .into(),
                1,
            ),
            ("fid input", acpo_fid::FidError::Input("x".into()).into(), 2),
            (
                "fid failure",
                acpo_fid::FidError::Numerical("x".into()).into(),
                1,
            ),
            (
                "iqa input",
                acpo_iqa::IqaError::MissingModel { path: "m".into() }.into(),
                2,
            ),
            ("iqa failure", acpo_iqa::IqaError::Ort("x".into()).into(), 1),
            (
                "report input",
                acpo_report::ReportError::Config {
                    field: "f".into(),
                    msg: "m".into(),
                }
                .into(),
                2,
            ),
            (
                "report failure",
                acpo_report::ReportError::Plot {
                    path: "p".into(),
                    msg: "m".into(),
                }
                .into(),
                1,
            ),
            (
                "text input",
                acpo_text::TextError::EmptyPrompt { index: 0 }.into(),
                2,
            ),
            (
                "text failure",
                acpo_text::TextError::Io {
                    path: "p".into(),
                    source: io(),
                }
                .into(),
                1,
            ),
            (
                "sd input",
                acpo_sd::SdError::BadFile {
                    path: "p".into(),
                    msg: "m".into(),
                }
                .into(),
                2,
            ),
            (
                "sd failure",
                acpo_sd::SdError::Io {
                    path: "p".into(),
                    source: io(),
                }
                .into(),
                1,
            ),
            (
                "finetune input",
                acpo_finetune::FinetuneError::Config {
                    field: "f".into(),
                    msg: "m".into(),
                }
                .into(),
                2,
            ),
            (
                "finetune failure",
                acpo_finetune::FinetuneError::Io {
                    path: "p".into(),
                    source: io(),
                }
                .into(),
                1,
            ),
        ];
        for (what, err, code) in cases {
            let err = err.context("running the stage");
            assert_eq!(exit_code(&err), code, "{what}: {err:#}");
        }
    }
}
