//! Interoperability with the reference implementation, python-tuf 7.0.0, both ways, with real processes:
//! - a repository made by `custody repo` is served over loopback HTTP; python-tuf's ngclient refreshes, downloads
//!   targets (from the top-level role and from ECDSA and RSA delegated roles), and refuses a target whose bytes
//!   were changed on disk;
//! - a repository made by python-tuf's Metadata API (root rotation, ed25519 and ECDSA keys, a delegated role) is
//!   read by custody's client, `custody tuf`.
//!
//! Needs `python3` with python-tuf 7.0.0 and securesystemslib's crypto extra (`.ci/run` installs them). Under CI
//! (`CI=true`) missing python-tuf fails the test; elsewhere the test says what is missing and passes without running.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script(name: &str) -> PathBuf {
    workspace().join("tests/interop").join(name)
}

/// The `custody` binary, or `None` (outside CI) when python-tuf is missing.
fn prerequisites() -> Option<PathBuf> {
    let tuf =
        Command::new("python3").args(["-c", "import tuf.ngclient, securesystemslib.signer, cryptography"]).output();
    if !tuf.is_ok_and(|o| o.status.success()) {
        let what = "python-tuf is not installed: run the pip install line of .ci/run \
                    (python3 -m pip install 'tuf==7.0.0' 'securesystemslib[crypto]==1.6.0')";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{what}");
        }
        eprintln!("SKIPPED (not under CI): {what}");
        return None;
    }
    Some(PathBuf::from(env!("CARGO_BIN_EXE_custody")))
}

/// A fresh directory under the system's temporary directory, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("custody-interop-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `python3 serve.py DIR` on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new("python3")
            .arg(script("serve.py"))
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 serve.py starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped")).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("PORT ").unwrap_or_else(|| panic!("serve.py said {line:?}"));
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(program: &Path, args: &[&str], cwd: &Path) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("CUSTODY_LOG", "warn")
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
    eprintln!(
        "$ {} {}\n{}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn succeed(program: &Path, args: &[&str], cwd: &Path) -> String {
    let output = run(program, args, cwd);
    assert!(output.status.success(), "{} {} failed", program.display(), args.join(" "));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn python_tuf_client_reads_a_custody_repository_and_refuses_changed_bytes() {
    let Some(custody) = prerequisites() else { return };
    let work = WorkDir::new("custody-repo");
    let dir = work.path();
    std::fs::write(dir.join("fw.bin"), b"acme firmware 2.0\n").unwrap();
    std::fs::write(dir.join("readme.txt"), b"read me\n").unwrap();
    std::fs::write(dir.join("tool.bin"), b"vendor tool\n").unwrap();
    let python = Path::new("python3");
    let repo = ["-C", "repo"];
    let with = |args: &[&'static str]| [&repo[..], args].concat();

    succeed(&custody, &[&["repo", "init"][..], &with(&["--root-keys", "2", "--root-threshold", "2"])].concat(), dir);
    succeed(
        &custody,
        &[&["repo", "delegate"][..], &with(&["acme", "--paths", "acme/*", "--key-type", "ecdsa", "--terminating"])]
            .concat(),
        dir,
    );
    succeed(
        &custody,
        &[&["repo", "delegate"][..], &with(&["vendor", "--paths", "vendor/*", "--key-type", "rsa"])].concat(),
        dir,
    );
    let custom = r#"--custom={"vendor-note": {"channel": "stable"}}"#;
    succeed(&custody, &[&["repo", "add"][..], &with(&["fw.bin", "--prefix", "acme/", custom])].concat(), dir);
    succeed(&custody, &[&["repo", "add"][..], &with(&["tool.bin", "--path", "vendor/tool.bin"])].concat(), dir);
    succeed(&custody, &[&["repo", "add"][..], &with(&["readme.txt"])].concat(), dir);
    succeed(&custody, &[&["repo", "verify"][..], &with(&[])].concat(), dir);

    let server = Server::start(&dir.join("repo"));
    let metadata_url = format!("{}/metadata/", server.url);
    let targets_url = format!("{}/targets/", server.url);
    let root = dir.join("repo/metadata/1.root.json");
    let client = |mode: &str, work: &str, paths: &[&str]| {
        let mut args = vec![
            script("python_client.py").display().to_string(),
            mode.into(),
            metadata_url.clone(),
            targets_url.clone(),
            root.display().to_string(),
            dir.join(work).display().to_string(),
        ];
        args.extend(paths.iter().map(|p| p.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(python, &args, dir)
    };

    let out = client("download", "client", &["acme/fw.bin", "vendor/tool.bin", "readme.txt"]);
    assert!(out.status.success(), "python-tuf did not download from the custody repository");
    let downloads = dir.join("client/downloads");
    let mut contents: Vec<Vec<u8>> =
        std::fs::read_dir(&downloads).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    contents.sort();
    assert_eq!(contents, [b"acme firmware 2.0\n".to_vec(), b"read me\n".to_vec(), b"vendor tool\n".to_vec()]);

    // Same length, other bytes, under every consistent name of the target.
    for entry in std::fs::read_dir(dir.join("repo/targets/acme")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"evil firmware 6.6\n").unwrap();
    }
    let out = client("tampered", "client2", &["acme/fw.bin"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("refused acme/fw.bin"), "python-tuf accepted changed bytes");

    // custody's own verification reports it too.
    let out = run(&custody, &[&["repo", "verify"][..], &with(&[])].concat(), dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not match its signed"), "verify missed it");
}

#[test]
fn custody_client_reads_a_python_tuf_repository() {
    let Some(custody) = prerequisites() else { return };
    let work = WorkDir::new("python-repo");
    let dir = work.path();
    succeed(Path::new("python3"), &[script("python_repo.py").to_str().unwrap(), "pyrepo"], dir);
    let server = Server::start(&dir.join("pyrepo"));
    let metadata_url = format!("{}/metadata/", server.url);
    let targets_url = format!("{}/targets/", server.url);
    let root = dir.join("pyrepo/metadata/1.root.json");

    succeed(&custody, &["tuf", "--metadata-dir", "trusted", "init", root.to_str().unwrap()], dir);
    for target in ["acme/fw.bin", "readme.txt"] {
        succeed(
            &custody,
            &[
                "tuf",
                "--metadata-dir",
                "trusted",
                "--metadata-url",
                &metadata_url,
                "--target-name",
                target,
                "--target-base-url",
                &targets_url,
                "--target-dir",
                "downloads",
                "download",
            ],
            dir,
        );
    }
    let mut contents: Vec<Vec<u8>> =
        std::fs::read_dir(dir.join("downloads")).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    contents.sort();
    assert_eq!(contents, [b"acme firmware 1.0\n".to_vec(), b"readme\n".to_vec()]);
    let trusted_root = std::fs::read(dir.join("trusted/root.json")).unwrap();
    assert_eq!(trusted_root, std::fs::read(dir.join("pyrepo/metadata/2.root.json")).unwrap(), "root chain not walked");
}
