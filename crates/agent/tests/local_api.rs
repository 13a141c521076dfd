//! The local API on its Unix socket: file permissions, peer credentials against the allow-list (clients run as other
//! uids: this test binary re-executed under `Command::uid`), malformed requests, and progress events.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use custody_agent::Agent;
use custody_agent::agent::Selection;
use custody_agent::local_api::{LocalApiServer, LocalClient, Op};
use serde_json::{Value, json};
use support::{PRODUCT, World};

const ID_A: &str = "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90";
const HELPER_SOCKET: &str = "CUSTODY_LOCAL_API_HELPER_SOCKET";
const HELPER_LINES: &str = "CUSTODY_LOCAL_API_HELPER_LINES";
const NOBODY: u32 = 65534;
const APP_UID: u32 = 65533;

/// Not a test: the client process of the tests below, which run this binary again under another uid with the
/// socket and the request lines in the environment. It prints `CONNECT-ERROR <errno>`, or one `ANSWER <line>` per
/// line read (`EOF` when the agent closed the connection).
#[test]
#[ignore = "helper process of the local API tests, run by them as another uid"]
fn helper_client() {
    let Ok(socket) = std::env::var(HELPER_SOCKET) else { return };
    let lines = std::env::var(HELPER_LINES).unwrap_or_default();
    let stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(e) => {
            println!("CONNECT-ERROR {}", e.raw_os_error().unwrap_or(0));
            return;
        }
    };
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let read_answer = |reader: &mut BufReader<UnixStream>| {
        let mut answer = String::new();
        match reader.read_line(&mut answer) {
            Ok(0) | Err(_) => println!("EOF"),
            Ok(_) => println!("ANSWER {}", answer.trim_end()),
        }
    };
    if lines.is_empty() {
        read_answer(&mut reader);
        return;
    }
    for line in lines.lines() {
        // A refused connection may be closed before the request is written; what was answered is still read.
        let _ = writer.write_all(format!("{line}\n").as_bytes());
        read_answer(&mut reader);
    }
}

/// Runs [`helper_client`] as `uid`:`gid` (no supplementary groups) and returns what it printed.
async fn as_user(uid: u32, gid: u32, socket: &Path, lines: &[&str]) -> Vec<String> {
    let world = socket.parent().and_then(Path::parent).unwrap();
    let exe = support::runnable_by_anyone(&std::env::current_exe().unwrap(), world);
    let socket = socket.to_owned();
    let lines = lines.join("\n");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["--ignored", "--exact", "helper_client", "--nocapture", "--test-threads=1", "-q"])
            .env(HELPER_SOCKET, socket)
            .env(HELPER_LINES, lines)
            .current_dir("/")
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let printed: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("ANSWER ") || l.starts_with("CONNECT-ERROR ") || *l == "EOF")
        .map(str::to_owned)
        .collect();
    assert!(
        !printed.is_empty(),
        "the helper (this test binary as uid {uid}) printed nothing; it must be executable by that uid.\nstdout: \
         {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("uid {uid} printed: {printed:?}");
    printed
}

fn answer(printed: &str) -> Value {
    serde_json::from_str(printed.strip_prefix("ANSWER ").unwrap_or_else(|| panic!("not an answer: {printed}"))).unwrap()
}

/// The agent with its local API serving; dropping the returned sender stops the server.
async fn serve(world: &World) -> (Arc<Agent>, PathBuf, tokio::sync::oneshot::Sender<()>) {
    let agent = Arc::new(Agent::open(world.config()).unwrap());
    let server = LocalApiServer::bind(&agent.config().agent.local_api).unwrap();
    let socket = server.path().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(agent.clone(), async move {
        let _ = stopped.await;
    }));
    (agent, socket, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_group_the_socket_is_roots_alone() {
    let world = World::new().await;
    let (_agent, socket, _stop) = serve(&world).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let printed = as_user(NOBODY, NOBODY, &socket, &[r#"{"v":1,"op":"status"}"#]).await;
    assert_eq!(printed, [format!("CONNECT-ERROR {}", libc::EACCES)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_credentials_are_checked_against_the_allow_list() {
    let extra =
        format!("group = \"{NOBODY}\"\n[[agent.local_api.allow]]\nuid = {APP_UID}\nproducts = [\"{PRODUCT}\"]\n");
    let mut world = World::with_agent_toml(&extra).await;
    world.publish(ID_A, "2.0", 1024);
    let (_agent, socket, _stop) = serve(&world).await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), NOBODY);

    // In the socket's group but not on the allow-list: one forbidden line naming the uid, then the end.
    let printed = as_user(NOBODY, NOBODY, &socket, &[]).await;
    let refused = answer(&printed[0]);
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["error"]["code"], "forbidden");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("uid {NOBODY}")), "{message}");
    let printed = as_user(NOBODY, NOBODY, &socket, &[r#"{"v":1,"op":"status"}"#, r#"{"v":1,"op":"status"}"#]).await;
    assert_eq!(answer(&printed[0])["error"]["code"], "forbidden");
    assert_eq!(printed[1..], ["EOF"], "nothing is answered after the refusal: {printed:?}");

    // The application's uid: its own product only, no admin operations.
    let lines = [
        r#"{"v":1,"id":1,"op":"status"}"#.to_owned(),
        format!(r#"{{"v":1,"id":2,"op":"scan","product":"{PRODUCT}"}}"#),
        r#"{"v":1,"id":3,"op":"scan","product":"acme-os"}"#.to_owned(),
        r#"{"v":1,"id":4,"op":"scan"}"#.to_owned(),
        format!(r#"{{"v":1,"id":5,"op":"hold","product":"{PRODUCT}"}}"#),
        r#"{"v":1,"id":6,"op":"install","product":"acme-os"}"#.to_owned(),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let printed = as_user(APP_UID, NOBODY, &socket, &lines).await;
    let answers: Vec<Value> = printed.iter().map(|p| answer(p)).collect();
    assert_eq!(answers.iter().map(|a| a["id"].clone()).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6].map(Value::from));
    assert_eq!(answers[0]["ok"], true);
    assert_eq!(answers[1]["ok"], true, "{}", answers[1]);
    assert_eq!(answers[1]["result"]["needed"][0]["id"], ID_A);
    for refused in &answers[2..] {
        assert_eq!(refused["ok"], false, "{refused}");
        assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    }
    assert!(answers[4]["error"]["message"].as_str().unwrap().contains("admin"));

    // Root may do everything.
    let mut root = LocalClient::connect(&socket).await.unwrap().unwrap();
    let holds = root
        .call(
            &Op::Hold { target: custody_agent::local_api::HoldTarget::Product(PRODUCT.parse().unwrap()) },
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(holds["products"], json!([PRODUCT]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_naming_the_problem() {
    let world = World::new().await;
    let (_agent, socket, _stop) = serve(&world).await;
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut ask = async |line: &str| -> Value {
        write.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).await.unwrap();
        serde_json::from_str(&answer).unwrap_or(Value::String(answer))
    };
    let cases = [
        ("{", "bad-request", "not JSON"),
        ("[1, 2]", "bad-request", "must be a JSON object"),
        (r#"{"op":"status"}"#, "bad-request", "\"v\" is missing"),
        (r#"{"v":7,"op":"status"}"#, "unsupported-version", "this agent speaks version 1"),
        (r#"{"v":1,"op":"reboot"}"#, "bad-request", "unknown op \"reboot\""),
        (r#"{"v":1,"op":"scan","produkt":"x"}"#, "bad-request", "unknown argument \"produkt\""),
        (r#"{"v":1,"op":"scan","product":"Acme App"}"#, "bad-request", "\"product\":"),
        (r#"{"v":1,"op":"install","update":"not-a-uuid"}"#, "bad-request", "\"update\":"),
        (r#"{"v":1,"op":"rollback"}"#, "bad-request", "\"product\" is required"),
    ];
    for (line, code, text) in cases {
        let answer = ask(line).await;
        assert_eq!(answer["ok"], false, "{line} → {answer}");
        assert_eq!(answer["error"]["code"], code, "{line} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(text), "{line} → {message}");
    }
    // The connection is still usable, and ids are echoed.
    let answer = ask(r#"{"v":1,"id":"x-1","op":"status"}"#).await;
    assert_eq!((answer["ok"].clone(), answer["id"].clone()), (json!(true), json!("x-1")));
    // An endless line is cut off with an error, then the connection is closed.
    let long = format!(r#"{{"v":1,"op":"status","pad":"{}"}}"#, "x".repeat(70 * 1024));
    let answer = ask(&long).await;
    assert!(answer["error"]["message"].as_str().unwrap().contains("longer than 65536 bytes"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_events_are_delivered_to_subscribers() {
    let mut world = World::new().await;
    world.publish(ID_A, "2.0", 2 << 20);
    let (_agent, socket, _stop) = serve(&world).await;
    let mut client = LocalClient::connect(&socket).await.unwrap().unwrap();
    let mut events = Vec::new();
    let subscribed = client.call(&Op::Subscribe, &mut |e| events.push(e)).await.unwrap();
    assert_eq!(subscribed, json!({ "subscribed": true }));
    let result = client
        .call(&Op::Install { selection: Selection::Product(PRODUCT.parse().unwrap()) }, &mut |e| events.push(e))
        .await
        .unwrap();
    assert_eq!(result[0]["result"], "installed", "{result}");
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["event"] == "download-progress")
        .map(|e| (e["received"].as_u64().unwrap(), e["total"].as_u64().unwrap()))
        .collect();
    assert!(progress.len() >= 2, "{names:?}");
    assert!(progress.windows(2).all(|w| w[0].0 < w[1].0), "progress only grows: {progress:?}");
    let (last, total) = *progress.last().unwrap();
    assert_eq!(last, total);
    assert!(events.iter().all(|e| e["v"] == 1));
    let position = |name: &str| names.iter().position(|n| *n == name).unwrap_or_else(|| panic!("{name}: {names:?}"));
    assert!(position("scan-started") < position("download-progress"));
    assert!(position("downloaded") < position("installing"));
    assert!(position("installing") < position("installed"));
}
