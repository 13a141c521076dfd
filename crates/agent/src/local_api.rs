//! The local API: newline-delimited JSON on a Unix socket (docs/local-api.md is the protocol's reference).
//!
//! - The socket is created mode 0660 owned by `root:<[agent.local_api] group>` (0600 without a group), so only root
//!   and the group can connect at all.
//! - Each connection's peer credentials (`SO_PEERCRED`: uid, gid, pid, taken by the kernel at `connect`) are matched
//!   against the allow-list: root and the daemon's own user may do everything; an `[[agent.local_api.allow]]` entry
//!   matching the peer's uid or (effective) gid grants its products and, with `admin = true`, everything. A peer that
//!   matches nothing gets one `forbidden` error line and the connection is closed.
//! - A request is one JSON object on one line: `{"v": 1, "id": <any JSON>, "op": "<name>", ...arguments}`. The answer
//!   is one line `{"v": 1, "id": <same>, "ok": true, "result": {...}}` or `{"v": 1, "id": <same>, "ok": false,
//!   "error": {"code": "...", "message": "..."}}`. After `subscribe`, event lines `{"v": 1, "event": "...", ...}` are
//!   interleaved with answers. Requests on one connection are answered in order.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use custody_catalog::{ProductName, UpdateId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::Error;
use crate::agent::{Agent, AgentEvent, Selection};
use crate::config::{AllowEntry, LocalApiSection};

/// The protocol version this build speaks (`"v"` of every line).
pub const PROTOCOL_VERSION: u64 = 1;
/// The longest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Who is on the other end of a connection, as the kernel says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// What a peer may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Hold, unhold, roll back, scan and install anything.
    pub admin: bool,
    /// Products it may scan and install now (`None`: every product).
    pub products: Option<BTreeSet<String>>,
}

/// The allow-list of the local API.
#[derive(Debug, Clone)]
pub struct Access {
    entries: Vec<AllowEntry>,
    /// The daemon's own effective uid: a peer running as the same user could edit the state directly anyway.
    own_uid: u32,
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Value,
    pub op: Op,
}

/// The operations of protocol version 1.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Status,
    /// Refresh metadata and evaluate; one product, or every product of the device.
    Scan {
        product: Option<ProductName>,
    },
    /// The last scan's needed updates (`all`: also the skipped ones and why).
    List {
        all: bool,
    },
    Download {
        selection: Selection,
    },
    /// Install now (overrides `download-only`, `notify` and the maintenance window; never a hold).
    Install {
        selection: Selection,
    },
    History {
        product: Option<ProductName>,
    },
    Rollback {
        product: ProductName,
    },
    Hold {
        target: HoldTarget,
    },
    Unhold {
        target: HoldTarget,
    },
    /// Remove a product (not the OS).
    Uninstall {
        product: ProductName,
    },
    /// Receive event lines on this connection from now on.
    Subscribe,
}

/// What a hold names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldTarget {
    Update(UpdateId),
    Product(ProductName),
}

/// An error answer: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

impl Access {
    pub fn new(section: &LocalApiSection) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let own_uid = unsafe { libc::geteuid() };
        Self { entries: section.allow.clone(), own_uid }
    }

    /// What `peer` may do, or `None` if it may not connect.
    pub fn grant(&self, peer: Peer) -> Option<Grant> {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return Some(Grant { admin: true, products: None });
        }
        let matching: Vec<&AllowEntry> = self
            .entries
            .iter()
            .filter(|e| e.uid == Some(peer.uid) || (e.uid.is_none() && e.gid == Some(peer.gid)))
            .collect();
        if matching.is_empty() {
            return None;
        }
        let admin = matching.iter().any(|e| e.admin);
        let all = admin || matching.iter().any(|e| e.products.iter().any(|p| p == "*"));
        let products = (!all).then(|| matching.iter().flat_map(|e| e.products.iter().cloned()).collect());
        Some(Grant { admin, products })
    }
}

impl Grant {
    pub fn may_product(&self, product: &str) -> bool {
        self.admin || self.products.as_ref().is_none_or(|set| set.contains(product))
    }

    pub fn all_products(&self) -> bool {
        self.admin || self.products.is_none()
    }
}

impl Request {
    /// Parses one request line; the error names the problem (and carries the request's id when it could be read).
    pub fn parse(line: &str) -> Result<Self, (Value, ApiError)> {
        let bad = |id: &Value, message: String| (id.clone(), ApiError::new("bad-request", message));
        let value: Value = serde_json::from_str(line).map_err(|e| bad(&Value::Null, format!("not JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(bad(&Value::Null, "a request must be a JSON object".into()));
        };
        let id = object.remove("id").unwrap_or(Value::Null);
        match object.remove("v") {
            Some(Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
            Some(other) => {
                return Err((
                    id,
                    ApiError::new(
                        "unsupported-version",
                        format!("\"v\": {other} is not supported; this agent speaks version {PROTOCOL_VERSION}"),
                    ),
                ));
            }
            None => return Err(bad(&id, format!("\"v\" is missing; send \"v\": {PROTOCOL_VERSION}"))),
        }
        let op = match object.remove("op") {
            Some(Value::String(op)) => op,
            Some(_) => return Err(bad(&id, "\"op\" must be a string".into())),
            None => return Err(bad(&id, "\"op\" is missing".into())),
        };
        let op = Op::parse(&op, object).map_err(|message| bad(&id, message))?;
        Ok(Self { id, op })
    }
}

impl Op {
    fn parse(name: &str, mut args: Map<String, Value>) -> Result<Self, String> {
        let allowed: &[&str] = match name {
            "status" | "subscribe" => &[],
            "scan" | "history" => &["product"],
            "list" => &["all"],
            "download" | "install" => &["update", "product"],
            "rollback" | "uninstall" => &["product"],
            "hold" | "unhold" => &["update", "product"],
            other => {
                return Err(format!(
                    "unknown op {other:?}; the ops are status, scan, list, download, install, history, rollback, \
                     hold, unhold, uninstall, subscribe"
                ));
            }
        };
        if let Some(unknown) = args.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!("{name}: unknown argument {unknown:?}"));
        }
        let product = take_parsed::<ProductName>(&mut args, "product")?;
        let update = take_parsed::<UpdateId>(&mut args, "update")?;
        let op = match name {
            "status" => Self::Status,
            "subscribe" => Self::Subscribe,
            "scan" => Self::Scan { product },
            "history" => Self::History { product },
            "list" => Self::List {
                all: match args.remove("all") {
                    None => false,
                    Some(Value::Bool(b)) => b,
                    Some(_) => return Err("list: \"all\" must be true or false".into()),
                },
            },
            "download" | "install" => {
                let selection = match (update, product) {
                    (Some(_), Some(_)) => return Err(format!("{name}: give \"update\" or \"product\", not both")),
                    (Some(id), None) => Selection::Update(id),
                    (None, Some(p)) => Selection::Product(p),
                    (None, None) => Selection::All,
                };
                if name == "download" { Self::Download { selection } } else { Self::Install { selection } }
            }
            "rollback" => Self::Rollback { product: product.ok_or("rollback: \"product\" is required")? },
            "uninstall" => Self::Uninstall { product: product.ok_or("uninstall: \"product\" is required")? },
            _ => {
                let target = match (update, product) {
                    (Some(id), None) => HoldTarget::Update(id),
                    (None, Some(p)) => HoldTarget::Product(p),
                    _ => return Err(format!("{name}: give exactly one of \"update\" and \"product\"")),
                };
                if name == "hold" { Self::Hold { target } } else { Self::Unhold { target } }
            }
        };
        Ok(op)
    }

    /// The request as sent by a client (for [`LocalClient`]).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut object = Map::new();
        let (name, args): (&str, Value) = match self {
            Self::Status => ("status", json!({})),
            Self::Subscribe => ("subscribe", json!({})),
            Self::Scan { product } => ("scan", json!({ "product": product.as_ref().map(|p| p.as_str()) })),
            Self::History { product } => ("history", json!({ "product": product.as_ref().map(|p| p.as_str()) })),
            Self::List { all } => ("list", json!({ "all": all })),
            Self::Download { selection } => ("download", selection.to_json()),
            Self::Install { selection } => ("install", selection.to_json()),
            Self::Rollback { product } => ("rollback", json!({ "product": product.as_str() })),
            Self::Uninstall { product } => ("uninstall", json!({ "product": product.as_str() })),
            Self::Hold { target } => ("hold", target.to_json()),
            Self::Unhold { target } => ("unhold", target.to_json()),
        };
        object.insert("v".into(), PROTOCOL_VERSION.into());
        object.insert("op".into(), name.into());
        if let Value::Object(args) = args {
            object.extend(args.into_iter().filter(|(_, v)| !v.is_null()));
        }
        object
    }

    /// Whether `grant` allows this op; the error says why not. `product_of` resolves an update id to its product.
    fn check(&self, grant: &Grant, product_of: impl Fn(&UpdateId) -> Option<String>) -> Result<(), ApiError> {
        let forbidden = |what: String| Err(ApiError::new("forbidden", what));
        match self {
            Self::Status | Self::List { .. } | Self::History { .. } | Self::Subscribe => Ok(()),
            Self::Rollback { .. } | Self::Hold { .. } | Self::Unhold { .. } | Self::Uninstall { .. }
                if !grant.admin =>
            {
                forbidden("this op needs an admin grant (root, or an allow entry with admin = true)".into())
            }
            Self::Rollback { .. } | Self::Hold { .. } | Self::Unhold { .. } | Self::Uninstall { .. } => Ok(()),
            Self::Scan { product: Some(p) }
            | Self::Download { selection: Selection::Product(p) }
            | Self::Install { selection: Selection::Product(p) } => match grant.may_product(p.as_str()) {
                true => Ok(()),
                false => forbidden(format!("product {p} is not among the products this client may act on")),
            },
            Self::Download { selection: Selection::Update(id) }
            | Self::Install { selection: Selection::Update(id) } => {
                match product_of(id) {
                    Some(p) if grant.may_product(&p) => Ok(()),
                    Some(p) => forbidden(format!("update {id} is of product {p}, which this client may not act on")),
                    // Unknown to the last scan: only a client allowed every product may ask (the op then fails).
                    None if grant.all_products() => Ok(()),
                    None => forbidden(format!("update {id} is not a needed update of this client's products")),
                }
            }
            Self::Scan { product: None }
            | Self::Download { selection: Selection::All }
            | Self::Install { selection: Selection::All } => match grant.all_products() {
                true => Ok(()),
                false => forbidden("without \"product\", this op concerns every product; name one of yours".into()),
            },
        }
    }
}

impl Selection {
    fn to_json(&self) -> Value {
        match self {
            Self::All => json!({}),
            Self::Update(id) => json!({ "update": id.to_string() }),
            Self::Product(p) => json!({ "product": p.as_str() }),
        }
    }
}

impl HoldTarget {
    fn to_json(&self) -> Value {
        match self {
            Self::Update(id) => json!({ "update": id.to_string() }),
            Self::Product(p) => json!({ "product": p.as_str() }),
        }
    }
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into() }
    }

    fn from_error(error: &Error) -> Self {
        Self::new(error.code(), crate::error_chain(error))
    }
}

/// Takes `key` out of `args` and parses it from a string.
fn take_parsed<T: std::str::FromStr>(args: &mut Map<String, Value>, key: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    match args.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => text.parse().map(Some).map_err(|e| format!("\"{key}\": {e}")),
        Some(_) => Err(format!("\"{key}\" must be a string")),
    }
}

/// A response line.
fn response(id: &Value, result: Result<Value, ApiError>) -> String {
    let line = match result {
        Ok(result) => json!({ "v": PROTOCOL_VERSION, "id": id, "ok": true, "result": result }),
        Err(error) => json!({ "v": PROTOCOL_VERSION, "id": id, "ok": false, "error": error }),
    };
    format!("{line}\n")
}

/// The listening socket.
#[derive(Debug)]
pub struct LocalApiServer {
    listener: UnixListener,
    path: PathBuf,
    access: Arc<Access>,
}

impl LocalApiServer {
    /// Creates the socket (replacing a stale one), mode 0660 with `group` (0600 without), parent directory 0755.
    pub fn bind(section: &LocalApiSection) -> Result<Self, Error> {
        let path = section.socket.clone();
        let api_error = |detail: String| Error::LocalApi { socket: path.clone(), detail };
        if let Some(parent) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(Error::io("create the directory", parent))?;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(api_error("exists and is not a socket; refusing to replace it".into()));
                }
                std::fs::remove_file(&path).map_err(Error::io("remove the stale socket", &path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("inspect", &path)(e)),
        }
        let gid = section.group.as_deref().map(group_id).transpose().map_err(api_error)?;
        // Bind with a restrictive umask-independent sequence: bind, then chown and chmod before anyone is served.
        let listener = UnixListener::bind(&path).map_err(Error::io("bind", &path))?;
        use std::os::unix::fs::PermissionsExt;
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&path, None, Some(gid)).map_err(Error::io("chown", &path))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(Error::io("chmod", &path))?;
        info!(socket = %path.display(), mode = format!("{mode:o}"), "local API listening");
        Ok(Self { listener, path, access: Arc::new(Access::new(section)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown` resolves.
    pub async fn serve(self, agent: Arc<Agent>, shutdown: impl std::future::Future<Output = ()>) {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!("local API accept failed: {e}");
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().acquire_owned().await else { break };
            let agent = agent.clone();
            let access = self.access.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, &access, &agent).await {
                    debug!("local API connection ended: {e}");
                }
                drop(permit);
            });
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection: check the peer, then answer requests line by line and forward events once subscribed.
async fn serve_connection(stream: UnixStream, access: &Access, agent: &Agent) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() };
    let (read, mut write) = stream.into_split();
    let Some(grant) = access.grant(peer) else {
        warn!(uid = peer.uid, gid = peer.gid, pid = peer.pid, "local API: connection refused");
        let error = ApiError::new(
            "forbidden",
            format!(
                "uid {} (gid {}) is not allowed to use the custody agent; an administrator can add it to \
                 [[agent.local_api.allow]]",
                peer.uid, peer.gid
            ),
        );
        write.write_all(response(&Value::Null, Err(error)).as_bytes()).await?;
        return write.shutdown().await;
    };
    debug!(uid = peer.uid, pid = peer.pid, admin = grant.admin, "local API: connection accepted");
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        while let Some(line) = out_rx.recv().await {
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(read);
    let mut subscription: Option<tokio::task::JoinHandle<()>> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader).take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line).await?;
        if read == 0 {
            break;
        }
        if line.len() > MAX_REQUEST_BYTES {
            let error = ApiError::new("bad-request", format!("request line longer than {MAX_REQUEST_BYTES} bytes"));
            let _ = out_tx.send(response(&Value::Null, Err(error))).await;
            break;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            let _ = out_tx.send(response(&Value::Null, Err(ApiError::new("bad-request", "not UTF-8")))).await;
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let (id, result) = match Request::parse(text.trim_end()) {
            Err((id, error)) => (id, Err(error)),
            Ok(request) => {
                let checked = request.op.check(&grant, |id| agent.product_of(id));
                let result = match (checked, &request.op) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Op::Subscribe) => {
                        if subscription.is_none() {
                            subscription =
                                Some(tokio::spawn(forward_events(agent.subscribe(), grant.clone(), out_tx.clone())));
                        }
                        Ok(json!({ "subscribed": true }))
                    }
                    (Ok(()), op) => agent.handle(op.clone()).await.map_err(|e| ApiError::from_error(&e)),
                };
                (request.id, result)
            }
        };
        if out_tx.send(response(&id, result)).await.is_err() {
            break;
        }
    }
    if let Some(task) = subscription {
        task.abort();
    }
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}

/// Sends the agent's events that `grant` may see to the connection.
async fn forward_events(
    mut events: broadcast::Receiver<AgentEvent>,
    grant: Grant,
    out: tokio::sync::mpsc::Sender<String>,
) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let line = json!({ "v": PROTOCOL_VERSION, "event": "lagged", "missed": missed });
                if out.send(format!("{line}\n")).await.is_err() {
                    return;
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if event.product().is_some_and(|p| !grant.may_product(p)) {
            continue;
        }
        let mut value = serde_json::to_value(&event).unwrap_or(Value::Null);
        if let Value::Object(object) = &mut value {
            object.insert("v".into(), PROTOCOL_VERSION.into());
        }
        if out.send(format!("{value}\n")).await.is_err() {
            return;
        }
    }
}

/// A gid from a group name or number.
fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).map_err(|_| format!("group {group:?} has a NUL byte"))?;
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrnam_r writes only into `entry` and `buffer`.
    let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Err(format!("group {group:?} does not exist"));
    }
    Ok(entry.gr_gid)
}

/// A client of the local API, for the CLI and applications written in Rust.
#[derive(Debug)]
pub struct LocalClient {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
    socket: PathBuf,
}

impl LocalClient {
    /// Connects; `Ok(None)` when no agent listens there (no socket file, or nobody accepting).
    pub async fn connect(socket: &Path) -> Result<Option<Self>, Error> {
        match UnixStream::connect(socket).await {
            Ok(stream) => {
                let (read, write) = stream.into_split();
                Ok(Some(Self { reader: BufReader::new(read), writer: write, next_id: 1, socket: socket.to_owned() }))
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                Ok(None)
            }
            Err(e) => Err(Error::LocalApi { socket: socket.to_owned(), detail: format!("cannot connect: {e}") }),
        }
    }

    /// Sends `op` and waits for its answer; event lines that arrive meanwhile go to `on_event`.
    pub async fn call(&mut self, op: &Op, on_event: &mut (dyn FnMut(Value) + Send)) -> Result<Value, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = op.to_json();
        request.insert("id".into(), id.into());
        let line = format!("{}\n", Value::Object(request));
        let io = |e: std::io::Error| Error::LocalApi { socket: self.socket.clone(), detail: e.to_string() };
        match self.writer.write_all(line.as_bytes()).await {
            Ok(()) => {}
            // A refused peer's connection is closed at once: its refusal may be waiting to be read.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {}
            Err(e) => return Err(io(e)),
        }
        loop {
            let mut line = String::new();
            let read = self.reader.read_line(&mut line).await.map_err(io)?;
            if read == 0 {
                return Err(Error::LocalApi {
                    socket: self.socket.clone(),
                    detail: "the agent closed the connection".into(),
                });
            }
            let value: Value = serde_json::from_str(&line).map_err(|e| Error::LocalApi {
                socket: self.socket.clone(),
                detail: format!("unreadable answer: {e}"),
            })?;
            if value.get("event").is_some() {
                on_event(value);
                continue;
            }
            let answers_us = value.get("id") == Some(&Value::from(id)) || value.get("id") == Some(&Value::Null);
            if !answers_us {
                continue;
            }
            return match value.get("ok") {
                Some(Value::Bool(true)) => Ok(value.get("result").cloned().unwrap_or(Value::Null)),
                _ => {
                    let error: ApiError = serde_json::from_value(value.get("error").cloned().unwrap_or_default())
                        .unwrap_or_else(|_| ApiError::new("unknown", value.to_string()));
                    Err(Error::Remote { code: error.code, message: error.message })
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(line: &str) -> String {
        Request::parse(line).unwrap_err().1.message
    }

    #[test]
    fn requests_parse_and_errors_name_the_problem() {
        let request = Request::parse(r#"{"v": 1, "id": "a", "op": "scan", "product": "acme-agent"}"#).unwrap();
        assert_eq!(request.id, json!("a"));
        assert_eq!(request.op, Op::Scan { product: Some("acme-agent".parse().unwrap()) });
        assert_eq!(Request::parse(r#"{"v":1,"op":"status"}"#).unwrap().op, Op::Status);
        assert!(parse_error("{").starts_with("not JSON"));
        assert_eq!(parse_error("[1]"), "a request must be a JSON object");
        assert!(parse_error(r#"{"op":"status"}"#).contains("\"v\" is missing"));
        let (id, error) = Request::parse(r#"{"v":2,"id":7,"op":"status"}"#).unwrap_err();
        assert_eq!((id, error.code.as_str()), (json!(7), "unsupported-version"));
        assert!(parse_error(r#"{"v":1,"op":"reboot"}"#).contains("unknown op \"reboot\""));
        assert!(parse_error(r#"{"v":1,"op":"scan","produkt":"x"}"#).contains("unknown argument \"produkt\""));
        assert!(parse_error(r#"{"v":1,"op":"scan","product":"Acme"}"#).starts_with("\"product\":"));
        assert!(parse_error(r#"{"v":1,"op":"hold"}"#).contains("exactly one of"));
        assert!(parse_error(r#"{"v":1,"op":"install","update":"x"}"#).contains("\"update\""));
        assert!(parse_error(r#"{"v":1,"op":"rollback"}"#).contains("\"product\" is required"));
        assert!(parse_error(r#"{"v":1,"op":"uninstall"}"#).contains("uninstall: \"product\" is required"));
        assert!(parse_error(r#"{"v":1,"op":"list","all":"yes"}"#).contains("true or false"));
    }

    #[test]
    fn ops_round_trip_through_their_json() {
        let ops = [
            Op::Status,
            Op::Subscribe,
            Op::Scan { product: None },
            Op::List { all: true },
            Op::Install { selection: Selection::Product("acme".parse().unwrap()) },
            Op::Download { selection: Selection::All },
            Op::Hold { target: HoldTarget::Update("3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90".parse().unwrap()) },
            Op::Rollback { product: "acme".parse().unwrap() },
            Op::Uninstall { product: "acme".parse().unwrap() },
        ];
        for op in ops {
            let line = Value::Object(op.to_json()).to_string();
            assert_eq!(Request::parse(&line).unwrap().op, op, "{line}");
        }
    }

    #[test]
    fn grants_follow_the_allow_list() {
        let section = LocalApiSection {
            allow: vec![
                AllowEntry { uid: Some(1000), gid: None, products: vec!["acme-agent".into()], admin: false },
                AllowEntry { uid: None, gid: Some(50), products: vec!["*".into()], admin: false },
                AllowEntry { uid: Some(1001), gid: None, products: vec![], admin: true },
            ],
            ..LocalApiSection::default()
        };
        let mut access = Access::new(&section);
        access.own_uid = 4242;
        let peer = |uid, gid| Peer { uid, gid, pid: None };
        assert_eq!(access.grant(peer(0, 0)), Some(Grant { admin: true, products: None }));
        assert_eq!(access.grant(peer(4242, 7)).map(|g| g.admin), Some(true));
        assert_eq!(access.grant(peer(2000, 2000)), None);
        let app = access.grant(peer(1000, 1000)).unwrap();
        assert!(app.may_product("acme-agent") && !app.may_product("acme-os") && !app.admin);
        assert!(access.grant(peer(3000, 50)).unwrap().all_products());
        assert!(access.grant(peer(1001, 1001)).unwrap().admin);

        let product_of = |_: &UpdateId| Some("acme-os".to_owned());
        let own = Op::Install { selection: Selection::Product("acme-agent".parse().unwrap()) };
        assert!(own.check(&app, product_of).is_ok());
        let other = Op::Scan { product: Some("acme-os".parse().unwrap()) };
        assert_eq!(other.check(&app, product_of).unwrap_err().code, "forbidden");
        let by_id =
            Op::Install { selection: Selection::Update("3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90".parse().unwrap()) };
        assert!(by_id.check(&app, product_of).unwrap_err().message.contains("acme-os"));
        assert!(Op::Scan { product: None }.check(&app, product_of).is_err());
        assert!(
            Op::Hold { target: HoldTarget::Product("acme-agent".parse().unwrap()) }.check(&app, product_of).is_err()
        );
        assert!(Op::Uninstall { product: "acme-agent".parse().unwrap() }.check(&app, product_of).is_err());
        assert!(Op::Status.check(&app, product_of).is_ok());
    }
}
