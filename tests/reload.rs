//! SPEC section 12: SIGHUP reloads the config and the certificate without
//! dropping connections or failing a request, a bad new config is logged
//! and the old one kept, and a change of the certificate files is picked up
//! by itself.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use support::chatgate::{eventually, Gate, GateConfig, SignedIn};
use support::client::{self, Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::supabase::{SigningKind, StandInSupabase};

async fn instance_of(addr: std::net::SocketAddr, user: &SignedIn) -> Option<String> {
    let mut client = TestClient::connect(addr, Alpn::H1).await.ok()?;
    let (status, _, body) = client.get("/api/convos", &[user.header()]).await;
    if status != StatusCode::OK {
        return None;
    }
    serde_json::from_slice::<Value>(&body).ok()?["instance"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn a_reload_swaps_the_upstreams_and_open_streams_carry_on() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let a = StandInLibreChat::start("lc-a").await;
    let b = StandInLibreChat::start("lc-b").await;
    let dir = tempfile::tempdir().unwrap();
    let config_a = GateConfig::new(&[a.url()]).with_supabase(&supabase);
    let gate = Gate::start_in(config_a.clone(), dir.path()).await;
    let user = SignedIn::new(&supabase, "ada@acme.example");
    assert_eq!(
        instance_of(gate.addr(), &user).await.as_deref(),
        Some("lc-a")
    );

    // A stream through A is open when the config changes.
    let mut sse_client = TestClient::connect(gate.addr(), Alpn::H2).await.unwrap();
    a.release_sse(1);
    let response = sse_client
        .send(
            Request::get("/sse?events=2")
                .header("cookie", &user.cookie)
                .body(client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("\"n\":1"));

    let mut config_b = GateConfig::new(&[b.url()]).with_supabase(&supabase);
    config_b.listen = config_a.listen.clone();
    gate.running
        .reload_with(config_b.load(dir.path()))
        .await
        .unwrap();
    assert_eq!(
        instance_of(gate.addr(), &user).await.as_deref(),
        Some("lc-b")
    );

    a.release_sse(1);
    let mut rest = String::new();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            rest.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert!(rest.contains("\"n\":2"), "the open stream finished: {rest}");
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_config_keeps_the_old_one() {
    support::init_crypto();
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let a = StandInLibreChat::start("lc-a").await;
    let b = StandInLibreChat::start("lc-b").await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = GateConfig::new(&[a.url()]).with_supabase(&supabase);
    config.listen = format!("127.0.0.1:{port}");
    config.shutdown_grace = "1s".to_owned();
    let path = config.write(dir.path());
    let log_path = dir.path().join("chatgate.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let user = SignedIn::new(&supabase, "ada@acme.example");
    eventually("served by lc-a", || async {
        instance_of(addr, &user).await.as_deref() == Some("lc-a")
    })
    .await;
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };

    config.upstreams = vec![b.url()];
    config.write(dir.path());
    assert!(hup().success());
    eventually("served by lc-b after SIGHUP", || async {
        instance_of(addr, &user).await.as_deref() == Some("lc-b")
    })
    .await;

    std::fs::write(&path, "[server]\nshutdown_grace = \"soon\"\n").unwrap();
    assert!(hup().success());
    eventually("the refusal is logged", || async {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("reload refused")
    })
    .await;
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("server.shutdown_grace"),
        "the log names the key"
    );
    assert_eq!(
        instance_of(addr, &user).await.as_deref(),
        Some("lc-b"),
        "the old config still serves"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
}

#[tokio::test]
async fn new_certificate_files_are_served_without_a_restart() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::start_in(GateConfig::new(&[upstream.url()]), dir.path()).await;
    let served = || async {
        let tls = client::tls_connect(gate.addr(), b"http/1.1").await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let before = served().await;
    // What `chatgate gen-cert` or a certificate renewal writes in place.
    chatgate::tls::write_self_signed(
        &dir.path().join("certs/cert.pem"),
        &dir.path().join("certs/key.pem"),
        &["localhost".to_owned()],
    )
    .unwrap();
    eventually("the new certificate is served", || async {
        served().await != before
    })
    .await;
}

/// The built binary with `config` written into `dir`, its log in `dir/chatgate.log`.
fn spawn_chatgate(config: &GateConfig, dir: &std::path::Path) -> Child {
    let path = config.write(dir);
    Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("chatgate.log")).unwrap())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_under_load_fails_no_request() {
    support::init_crypto();
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let a = StandInLibreChat::start("lc-a").await;
    let b = StandInLibreChat::start("lc-b").await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = GateConfig::new(&[a.url(), b.url()]).with_supabase(&supabase);
    config.listen = format!("127.0.0.1:{port}");
    let mut child = spawn_chatgate(&config, dir.path());
    let users: Vec<SignedIn> = (0..4)
        .map(|n| SignedIn::new(&supabase, &format!("user{n}@acme.example")))
        .collect();
    eventually("chatgate serves", || async {
        instance_of(addr, &users[0]).await.is_some()
    })
    .await;

    // Clients on HTTP/1.1 and HTTP/2, each on a connection it keeps, and
    // some opening a new connection per request, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for (n, user) in users.iter().enumerate() {
        for (alpn, reconnect) in [
            (Alpn::H1, false),
            (Alpn::H2, false),
            (Alpn::H1, true),
            (Alpn::H2, true),
        ] {
            let cookie = user.cookie.clone();
            let (stop, served) = (stop.clone(), served.clone());
            clients.spawn(async move {
                let mut failures = Vec::new();
                let mut client = TestClient::connect(addr, alpn).await.unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if reconnect {
                        client = TestClient::connect(addr, alpn).await.unwrap();
                    }
                    let path = if n % 2 == 0 {
                        "/api/convos"
                    } else {
                        "/api/messages"
                    };
                    let (status, _, body) = client.get(path, &[("cookie", cookie.as_str())]).await;
                    if status != StatusCode::OK {
                        failures.push(format!(
                            "{alpn:?} {path}: {status} {}",
                            String::from_utf8_lossy(&body)
                        ));
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
                failures
            });
        }
    }

    let log = dir.path().join("chatgate.log");
    let reloads = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("SIGHUP: config and certificate reloaded")
            .count()
    };
    for round in 1..=6 {
        // Every other reload changes what `[supabase]` holds, so Supabase's
        // caches are rebuilt as well as kept.
        config.tenant_cache_ttl = if round % 2 == 0 { "60s" } else { "61s" }.to_owned();
        config.write(dir.path());
        let before = served.load(Ordering::Relaxed);
        signal(&child, "-HUP");
        eventually("the reload is logged", || async { reloads() == round }).await;
        // Requests go on being served under the new config before the next one.
        eventually("requests after the reload", || async {
            served.load(Ordering::Relaxed) >= before + 200
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    while let Some(done) = clients.join_next().await {
        failures.extend(done.unwrap());
    }
    assert!(served.load(Ordering::Relaxed) >= 6 * 200);
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        served.load(Ordering::Relaxed),
        &failures[..failures.len().min(10)]
    );

    signal(&child, "-TERM");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
}
