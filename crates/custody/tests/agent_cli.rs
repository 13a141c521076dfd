//! `custody agent` as a user runs it: the real binary against a real service on loopback (the world of
//! crates/agent/tests/support), acting directly on the state directory or through a running daemon's socket; JSON
//! output, exit codes, and the local API's refusal of a uid that is not allowed.

#[path = "../../agent/tests/support/mod.rs"]
mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::{PRODUCT, World};

const ID_A: &str = "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90";
const NOBODY: u32 = 65534;

/// Runs `custody agent --config <world> ARGS` as `uid` (root when `None`).
async fn agent(world: &World, uid: Option<u32>, args: &[&str]) -> Output {
    let exe = support::runnable_by_anyone(std::path::Path::new(env!("CARGO_BIN_EXE_custody")), world.dir.path());
    let mut command = Command::new(exe);
    command.arg("agent").arg("--config").arg(&world.config).args(args).current_dir("/").env_remove("CUSTODY_LOG");
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_act_directly_without_a_daemon_with_json_and_exit_codes() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 256 * 1024);

    let scan = agent(&world, None, &["scan", "--json"]).await;
    assert_eq!(code(&scan), 0, "{}", text(&scan));
    let scan = json(&scan);
    assert_eq!((scan["schema"].clone(), scan["command"].clone()), (Value::from(1), Value::from("scan")));
    assert_eq!(scan["result"]["needed"][0]["id"], ID_A);
    assert_eq!(scan["result"]["needed"][0]["product"], PRODUCT);

    let list = agent(&world, None, &["list"]).await;
    assert_eq!(code(&list), 0);
    assert!(text(&list).contains("1 update(s) needed"), "{}", text(&list));

    let install = agent(&world, None, &["install", "--json", "--update", ID_A]).await;
    assert_eq!(code(&install), 0, "{}", text(&install));
    assert_eq!(json(&install)["result"][0]["result"], "installed");
    assert_eq!(world.installed_version().as_deref(), Some("2.0"));

    // Nothing left to do: exit code 3, for scan, list and install alike.
    let scan = agent(&world, None, &["scan"]).await;
    assert_eq!(code(&scan), 3, "{}", text(&scan));
    assert!(text(&scan).contains("No updates needed."));
    assert_eq!(code(&agent(&world, None, &["install"]).await), 3);

    let history = agent(&world, None, &["history", "--json"]).await;
    assert_eq!(code(&history), 0);
    let history = json(&history);
    assert_eq!(history["result"][0]["event"], "installed");
    assert_eq!(history["result"][0]["product"], PRODUCT);

    let status = agent(&world, None, &["status", "--json"]).await;
    assert_eq!(code(&status), 0);
    assert!(json(&status)["result"]["last_scan"]["time"].is_string());

    // Usage errors are 2; failures are 1, in JSON too.
    assert_eq!(code(&agent(&world, None, &["hold"]).await), 2);
    assert_eq!(code(&agent(&world, None, &["install", "--update", "nope"]).await), 2);
    let unknown = agent(&world, None, &["install", "--json", "--update", "9b2d7c1e-0a4f-4f43-8d1a-6c3e5b7a9f12"]).await;
    assert_eq!(code(&unknown), 1);
    assert_eq!(json(&unknown)["error"]["code"], "unknown-update");

    // Uninstall removes the product and is reported to the service; the status shows the download's sources.
    let status = json(&agent(&world, None, &["status", "--json"]).await);
    assert_eq!(status["result"]["delivery"]["downloads"], 1, "{status}");
    assert_eq!(status["result"]["last_downloads"][0]["version"], "2.0");
    let removed = agent(&world, None, &["uninstall", PRODUCT, "--json"]).await;
    assert_eq!(code(&removed), 0, "{}", text(&removed));
    assert_eq!(json(&removed)["result"], serde_json::json!({"product": PRODUCT, "version": "2.0"}));
    assert_eq!(world.installed_version(), None);
    let reported = world.received.lock().unwrap().events.iter().any(|e| e.kind.as_str() == "uninstalled");
    assert!(reported, "the uninstall was reported");
    let again = agent(&world, None, &["uninstall", PRODUCT, "--json"]).await;
    assert_eq!((code(&again), json(&again)["error"]["code"].as_str()), (1, Some("install")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_through_the_daemon_and_other_uids_are_refused() {
    let extra = format!("group = \"{NOBODY}\"\n[policy]\ndefault = \"notify\"\n");
    let mut world = World::with_agent_toml(&extra).await;
    world.publish(ID_A, "2.0", 256 * 1024);
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(["agent", "run", "--config"])
        .arg(&world.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = world.path("run/agent.sock");
    // Wait (not a timing assertion) until the daemon listens.
    for _ in 0..600 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(socket.exists(), "the daemon did not create its socket");

    // The daemon holds the state lock, so a command that succeeds went through the socket.
    let install = agent(&world, None, &["install", "--json"]).await;
    assert_eq!(code(&install), 0, "{}", text(&install));
    assert_eq!(json(&install)["result"][0]["result"], "installed");
    assert_eq!(world.installed_version().as_deref(), Some("2.0"));
    let status = agent(&world, None, &["status", "--json"]).await;
    assert!(json(&status)["result"]["next_scan"].is_string(), "a running daemon plans its next scan");

    // uid 65534 may open the socket (its group) but is not on the allow-list.
    let refused = agent(&world, Some(NOBODY), &["status"]).await;
    assert_eq!(code(&refused), 1, "{}", text(&refused));
    assert!(text(&refused).contains("uid 65534 (gid 65534) is not allowed"), "{}", text(&refused));
    let refused = agent(&world, Some(NOBODY), &["status", "--json"]).await;
    assert_eq!(json(&refused)["error"]["code"], "forbidden");

    // SIGTERM: a graceful stop, exit 0, socket removed.
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    let status = tokio::task::spawn_blocking(move || daemon.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists());
}
