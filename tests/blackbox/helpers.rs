//! Running the binary from tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The built binary: `REFUND_PROJECTOR_BIN`, or the one next to this test's
/// profile directory (`target/<profile>/refund-projector`).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REFUND_PROJECTOR_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps");
    let path = profile_dir.join("refund-projector");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --release --bins`, as scripts/test.sh does) or set REFUND_PROJECTOR_BIN",
        path.display()
    );
    path
}

pub fn command() -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

/// Runs the binary to completion and insists that it succeeded.
pub fn run_ok(args: &[&str]) -> Output {
    let output = command().args(args).output().expect("the binary starts");
    assert!(
        output.status.success(),
        "refund-projector {args:?} failed with {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `generate` into a file.
pub fn generate(path: &Path, refunds: u64, seed: u64, noise: Option<(f64, usize, f64)>) {
    let (dup, window, invalid) = noise.unwrap_or((0.0, 0, 0.0));
    let output = run_ok(&[
        "generate",
        "--refunds",
        &refunds.to_string(),
        "--seed",
        &seed.to_string(),
        "--dup-rate",
        &dup.to_string(),
        "--shuffle-window",
        &window.to_string(),
        "--invalid-rate",
        &invalid.to_string(),
    ]);
    std::fs::write(path, output.stdout).expect("the events file is writable");
}

pub fn replay(input: &Path, db: &Path, dlq: Option<&Path>) -> Output {
    let mut args = vec!["replay", "--input", input.to_str().unwrap(), "--db", db.to_str().unwrap()];
    if let Some(dlq) = dlq {
        args.extend(["--dlq", dlq.to_str().unwrap()]);
    }
    run_ok(&args)
}

pub fn export(db: &Path) -> String {
    String::from_utf8(run_ok(&["export", "--db", db.to_str().unwrap()]).stdout).expect("export is UTF-8")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository").to_path_buf()
}
