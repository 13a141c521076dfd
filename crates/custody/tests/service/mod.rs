//! Starting a real `custody server` process for this crate's end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `custody --log info server --data DIR/data --config DIR/server.toml` with `config` written to that file, and
/// waits until it printed its addresses. Returns the process and its HTTPS and plain HTTP base URLs. Its log goes to
/// `DIR/server.log`, which a failure to start quotes.
pub fn spawn(dir: &Path, config: &str) -> (Child, String, String) {
    let config_file = dir.join("server.toml");
    std::fs::write(&config_file, config).unwrap();
    let log = dir.join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(["--log", "info", "server", "--data"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config_file)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut https, mut http) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        let url = line.split_whitespace().next().unwrap_or_default().to_owned();
        if url.starts_with("https://") {
            https = Some(url);
        } else if url.starts_with("http://") {
            http = Some(url);
        }
        if line.contains("client configuration") {
            break;
        }
    }
    // Keep draining stdout so that the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let (Some(https), Some(http)) = (https, http) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    };
    (child, https, http)
}
