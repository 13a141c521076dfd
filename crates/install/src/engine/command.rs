//! Running a command from signed metadata (a post-install health check, a driver reload): the argv as signed,
//! executed directly (no shell, no `PATH` search: the program is an absolute path), with an empty environment
//! except a fixed `PATH`, `/` as working directory, no input, output to a log file, and a deadline after which its
//! whole process group is killed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use custody_catalog::Argv;

/// The `PATH` a command sees (for the programs it runs itself; its own program is an absolute path).
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of the command's output a failure report quotes.
const OUTPUT_TAIL: u64 = 1024;

/// Runs `argv` to completion or until `timeout`; `Err` describes the failure (start error, exit status with the
/// tail of the output, or the timeout). Output goes to `log`, replaced on each run.
pub(crate) fn run(argv: &Argv, timeout: Duration, log: &Path) -> Result<(), String> {
    let program = argv.program();
    let output = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(log)
        .map_err(|e| format!("cannot open the log {}: {e}", log.display()))?;
    let output_for_stderr = output.try_clone().map_err(|e| format!("cannot open the log {}: {e}", log.display()))?;
    let mut command = Command::new(program);
    command
        .args(&argv.args()[1..])
        .env_clear()
        .env("PATH", SAFE_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(output_for_stderr.try_clone().map_err(|e| format!("cannot open the log: {e}"))?)
        .stderr(output_for_stderr)
        // Its own process group, so that a timeout kills whatever it started too.
        .process_group(0);
    let mut child = command.spawn().map_err(|e| format!("{program} could not be started: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("{program}: waiting failed: {e}")),
        }
        if Instant::now() >= deadline {
            // The child is its own process group leader (process_group(0)), so its pid is the group id.
            if let Ok(group) = i32::try_from(child.id()) {
                // SAFETY: `kill` only sends a signal; a negative pid addresses the process group of the child,
                // which has not been reaped yet (no `wait` succeeded), so the id cannot have been reused.
                unsafe { libc::kill(-group, libc::SIGKILL) };
            }
            let _ = child.wait();
            return Err(format!("{program} did not finish within {} s and was killed", timeout.as_secs_f64()));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    if status.success() {
        return Ok(());
    }
    let mut output = output;
    let length = output.seek(SeekFrom::End(0)).unwrap_or(0);
    let mut tail = String::new();
    if output.seek(SeekFrom::Start(length.saturating_sub(OUTPUT_TAIL))).is_ok() {
        let mut bytes = Vec::new();
        let _ = output.read_to_end(&mut bytes);
        tail = String::from_utf8_lossy(&bytes).trim().to_owned();
    }
    match tail.is_empty() {
        true => Err(format!("{program} {status}")),
        false => Err(format!("{program} {status}; output: {tail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Argv {
        Argv::new(args.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    #[test]
    fn success_failure_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        run(&argv(&["/bin/sh", "-c", "exit 0"]), Duration::from_secs(10), &log).unwrap();

        let error =
            run(&argv(&["/bin/sh", "-c", "echo broken >&2; exit 3"]), Duration::from_secs(10), &log).unwrap_err();
        assert!(error.contains("exit status: 3") && error.contains("broken"), "{error}");

        // The environment is empty but for PATH.
        let error = run(&argv(&["/bin/sh", "-c", "env; exit 1"]), Duration::from_secs(10), &log).unwrap_err();
        assert!(error.contains("PATH=") && !error.contains("HOME="), "{error}");

        let error = run(&argv(&["/no/such/program"]), Duration::from_secs(10), &log).unwrap_err();
        assert!(error.contains("could not be started"), "{error}");

        // A command that outlives its deadline is killed with what it started.
        let error =
            run(&argv(&["/bin/sh", "-c", "sleep 30 & sleep 30"]), Duration::from_millis(200), &log).unwrap_err();
        assert!(error.contains("did not finish"), "{error}");
    }
}
