//! A real nginx with `proxy_cache` in front of the content origin, as a site cache or CDN would be: a download
//! through it gets the right bytes, the second is a cache HIT that never reaches the origin (its
//! `custody_content_bytes_served_total` does not move), and a Range request is answered from the cache with `206`.
//!
//! Needs nginx (Debian package `nginx`), found on `PATH` or as `/usr/sbin/nginx`; without it the test fails and says
//! so. nginx runs as a child process on loopback with a configuration and cache in a temporary directory.
//!
//! This file holds one test, so that nothing else in its process serves content while the counter is compared.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::{Service, pseudo_random};

/// nginx in the foreground (`daemon off`, `master_process off`: one process), killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    prefix: PathBuf,
}

impl Nginx {
    fn start(work: &Path, origin: SocketAddr) -> Self {
        let binary = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("nginx"))
            .chain([PathBuf::from("/usr/sbin/nginx")])
            .find(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!("nginx not found on PATH or as /usr/sbin/nginx: install the Debian package nginx (apt-get install nginx)")
            });
        let prefix = work.join("nginx");
        std::fs::create_dir_all(prefix.join("cache")).unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n\
               proxy_cache_path {prefix}/cache levels=1:2 keys_zone=custody:1m max_size=64m inactive=1h use_temp_path=off;\n\
               server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://{origin};\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_cache custody;\n\
                 add_header X-Cache-Status $upstream_cache_status always;\n    }}\n  }}\n}}\n",
            prefix = prefix.display(),
        );
        let file = prefix.join("nginx.conf");
        std::fs::write(&file, config).unwrap();
        let child = Command::new(&binary)
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", binary.display()));
        let mut nginx = Self { child, addr, prefix };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {addr}: {}", nginx.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_proxy_cache_serves_repeat_and_range_requests_without_the_origin() {
    let service = Service::start("").await;
    let content = pseudo_random(700_000, 7);
    let hex = service.upload(&content).await;
    let work = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(work.path(), service.running().http_addr);
    let url = format!("http://{}/targets/acme/{hex}.agent.bin", nginx.addr);
    let served = "custody_content_bytes_served_total";

    let first = service.plain.get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK, "{}", nginx.log());
    assert_eq!(first.headers()["x-cache-status"], "MISS");
    assert_eq!(&first.bytes().await.unwrap()[..], &content[..], "the bytes through the cache");
    let after_first = service.metric(served).await;
    assert!(after_first >= content.len() as f64, "the origin served the first download: {after_first}");

    let second = service.plain.get(&url).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.headers()["x-cache-status"], "HIT");
    assert_eq!(second.headers()["etag"], format!("\"{hex}\"").as_str(), "the origin's strong tag");
    assert_eq!(&second.bytes().await.unwrap()[..], &content[..]);

    let range = service.plain.get(&url).header("range", "bytes=100000-199999").send().await.unwrap();
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.headers()["x-cache-status"], "HIT");
    assert_eq!(range.headers()["content-range"], "bytes 100000-199999/700000");
    assert_eq!(&range.bytes().await.unwrap()[..], &content[100_000..200_000]);

    assert_eq!(service.metric(served).await, after_first, "cache hits do not reach the origin");
    drop(nginx);
    service.stop().await;
}
