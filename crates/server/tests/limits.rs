//! Connection limits and timeouts of both listeners, on real sockets: a client that sends half a request line is
//! disconnected after the header timeout (plain HTTP and HTTPS), one that never completes the TLS handshake after
//! the handshake timeout, an idle keep-alive connection after the keep-alive timeout, and with `max_connections = 2`
//! a third connection waits, unserved, until one of the first two closes.
//!
//! Deadlines here are failure guards far above the configured timeouts (a connection a broken limit would keep open
//! fails the test), never measurements.

mod support;

use std::time::Duration;

use support::Service;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far above every timeout configured below: reaching it means the server kept the connection open.
const GUARD: Duration = Duration::from_secs(20);

/// Reads until the server closes the connection; fails the test if it is still open after [`GUARD`].
async fn closed_by_server(stream: &mut (impl AsyncRead + Unpin), what: &str) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(GUARD, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{what}: the server kept the connection open for {GUARD:?}");
    received
}

/// Sends `GET /health` and reads the response (it has a `Content-Length`); the connection stays open.
async fn health(stream: &mut (impl AsyncRead + tokio::io::AsyncWrite + Unpin)) -> String {
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&response).ends_with("ok\n") {
        let n = tokio::time::timeout(GUARD, stream.read(&mut buffer)).await.expect("no response").unwrap();
        assert!(n > 0, "closed before the response: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8(response).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_disconnected_after_the_header_and_handshake_timeouts() {
    let service =
        Service::start("[limits]\nheader_timeout = \"1s\"\nkeep_alive_timeout = \"1s\"\nhandshake_timeout = \"1s\"\n")
            .await;
    let running = service.running();

    // Slowloris on the content listener: half a request line, then nothing.
    let mut plain = TcpStream::connect(running.http_addr).await.unwrap();
    plain.write_all(b"GET /content/sha256/").await.unwrap();
    closed_by_server(&mut plain, "half a request line over plain HTTP").await;

    // The same after a complete TLS handshake on the HTTPS listener.
    let tcp = TcpStream::connect(running.https_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = service.tls_connector().connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /metadata/").await.unwrap();
    closed_by_server(&mut tls, "half a request line over HTTPS").await;

    // A TCP connection that never starts the handshake.
    let mut silent = TcpStream::connect(running.https_addr).await.unwrap();
    let received = closed_by_server(&mut silent, "no TLS handshake").await;
    assert!(received.is_empty(), "nothing is sent to a client that never said hello");

    let timed_out = |listener: &str, deadline: &str| {
        format!("custody_connections_timed_out_total{{listener=\"{listener}\",deadline=\"{deadline}\"}}")
    };
    assert!(service.metric(&timed_out("http", "header")).await >= 1.0);
    assert!(service.metric(&timed_out("https", "header")).await >= 1.0);
    assert!(service.metric(&timed_out("https", "handshake")).await >= 1.0);
    assert!(service.metric("custody_connections_accepted_total{listener=\"https\"}").await >= 3.0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_keep_alive_timeout() {
    // The header timeout is long, so only the keep-alive timeout can close the idle connection within the guard.
    let service = Service::start("[limits]\nheader_timeout = \"60s\"\nkeep_alive_timeout = \"1s\"\n").await;
    let mut plain = TcpStream::connect(service.running().http_addr).await.unwrap();
    let response = health(&mut plain).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let more = closed_by_server(&mut plain, "idle keep-alive connection").await;
    assert!(more.is_empty());
    assert!(
        service.metric("custody_connections_timed_out_total{listener=\"http\",deadline=\"keep-alive\"}").await >= 1.0
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_limit_waits_until_one_closes() {
    let service =
        Service::start("[limits]\nmax_connections = 2\nheader_timeout = \"60s\"\nkeep_alive_timeout = \"60s\"\n").await;
    let running = service.running();

    // Plain HTTP: two served connections, kept open.
    let mut first = TcpStream::connect(running.http_addr).await.unwrap();
    let mut second = TcpStream::connect(running.http_addr).await.unwrap();
    health(&mut first).await;
    health(&mut second).await;
    // The third is queued by the kernel (connect succeeds) but not accepted: its request gets no answer.
    let mut third = TcpStream::connect(running.http_addr).await.unwrap();
    third.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    let mut buffer = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buffer)).await;
    assert!(early.is_err(), "the third connection was served while two were open: {early:?}");
    health(&mut second).await; // the open ones are still served
    drop(first);
    let mut response = Vec::new();
    while !String::from_utf8_lossy(&response).ends_with("ok\n") {
        let n = tokio::time::timeout(GUARD, third.read(&mut buffer)).await.expect("third never served").unwrap();
        assert!(n > 0);
        response.extend_from_slice(&buffer[..n]);
    }
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));

    // HTTPS: the same, with the third client's handshake waiting.
    let connect = || async {
        let tcp = TcpStream::connect(running.https_addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(GUARD, service.tls_connector().connect(name, tcp)).await
    };
    let mut first = connect().await.expect("first handshake").unwrap();
    let mut second = connect().await.expect("second handshake").unwrap();
    health(&mut first).await;
    health(&mut second).await;
    let tcp = TcpStream::connect(running.https_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut handshake = Box::pin(service.tls_connector().connect(name, tcp));
    let early = tokio::time::timeout(Duration::from_millis(500), &mut handshake).await;
    assert!(early.is_err(), "the third TLS connection was served while two were open");
    drop(first);
    let mut third = tokio::time::timeout(GUARD, handshake).await.expect("third never served").unwrap();
    assert!(health(&mut third).await.starts_with("HTTP/1.1 200"));
    drop((second, third)); // /metrics needs a connection of its own
    assert!(service.metric("custody_connection_limit_reached_total{listener=\"https\"}").await >= 1.0);
    assert!(service.metric("custody_connection_limit_reached_total{listener=\"http\"}").await >= 1.0);
    service.stop().await;
}
