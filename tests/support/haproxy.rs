//! A real haproxy (Debian's) in front of chatgate for a test: its own
//! process on a free port of 127.0.0.1 with a generated config, killed when
//! dropped. Not the system service: nothing here touches /etc/haproxy.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;

/// How often and how long [`Haproxy`] polls its port after spawning.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const POLL_TRIES: u32 = 400;
/// Fresh ports tried when the one picked was taken before haproxy bound it.
const START_ATTEMPTS: u32 = 3;

/// Which PROXY protocol header haproxy starts each connection to chatgate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    /// `send-proxy`: the v1 text header.
    V1,
    /// `send-proxy-v2`: the v2 binary header.
    V2,
}

/// An haproxy child process with one frontend and one server.
pub struct Haproxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// `mode tcp` in front of `target` (either chatgate listener, TLS passes
    /// through), starting every connection to it with a PROXY header.
    pub async fn tcp(target: SocketAddr, send_proxy: SendProxy) -> Haproxy {
        let option = match send_proxy {
            SendProxy::V1 => "send-proxy",
            SendProxy::V2 => "send-proxy-v2",
        };
        Self::start(|port, _| {
            format!(
                "frontend front\n    mode tcp\n    bind 127.0.0.1:{port}\n    default_backend chatgate\n\
                 backend chatgate\n    mode tcp\n    server gate {target} {option}\n"
            )
        })
        .await
    }

    /// `mode http` terminating TLS (a self-signed `localhost` certificate,
    /// ALPN h2 and http/1.1) in front of chatgate's plain `target`, with
    /// `option forwardfor` and `X-Forwarded-Proto: https`, as a TLS load
    /// balancer in front of `server.http_listen` is set up.
    pub async fn https(target: SocketAddr) -> Haproxy {
        Self::start(|port, dir| {
            let pem = dir.join("haproxy.pem");
            let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                .expect("generate a certificate");
            let both = generated.cert.pem() + &generated.key_pair.serialize_pem();
            std::fs::write(&pem, both).expect("write haproxy.pem");
            format!(
                "frontend front\n    mode http\n    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1\n\
                 \x20   option forwardfor\n    http-request set-header X-Forwarded-Proto https\n\
                 \x20   default_backend chatgate\n\
                 backend chatgate\n    mode http\n    server gate {target}\n",
                pem = pem.display()
            )
        })
        .await
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Writes `global`, `defaults` and the proxies `proxies(port, dir)`
    /// gives, starts haproxy in the foreground and waits until its port
    /// accepts connections.
    async fn start(proxies: impl Fn(u16, &Path) -> String) -> Haproxy {
        for attempt in 1..=START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = dir.path().join("haproxy.cfg");
            let port = free_port();
            let text = format!(
                "global\n    nbthread 1\n    maxconn 256\n\
                 defaults\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
                 {}",
                proxies(port, dir.path())
            );
            std::fs::write(&config, text).expect("write haproxy.cfg");
            let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
            let child = Command::new(find_haproxy())
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("run haproxy");
            let mut haproxy = Haproxy { child, port, dir };
            match haproxy.wait_listening().await {
                Ok(()) => return haproxy,
                Err(_) if attempt < START_ATTEMPTS => continue,
                Err(what) => {
                    let log = std::fs::read_to_string(haproxy.dir.path().join("haproxy.log"))
                        .unwrap_or_default();
                    panic!("haproxy on 127.0.0.1:{port} {what}; its log:\n{log}");
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    async fn wait_listening(&mut self) -> Result<(), String> {
        for _ in 0..POLL_TRIES {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited ({status})"));
            }
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(format!(
            "did not listen within {:?}",
            POLL_INTERVAL * POLL_TRIES
        ))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_haproxy() -> PathBuf {
    super::find_program("haproxy", "/usr/sbin/haproxy", "haproxy")
}
