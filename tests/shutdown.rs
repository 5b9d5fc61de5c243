//! SIGTERM on the real binary (SPEC section 12): `/readyz` turns 503 at
//! once, new connections are refused once the listeners close, and a
//! stream that was open finishes.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use support::chatgate::{eventually, GateConfig, SignedIn};
use support::client::{self, Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::supabase::{SigningKind, StandInSupabase};

const HANG_GUARD: Duration = Duration::from_secs(30);

#[tokio::test]
async fn sigterm_drains_an_open_sse_stream() {
    support::init_crypto();
    let upstream = StandInLibreChat::start("lc-1").await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let user = SignedIn::new(&supabase, "ada@acme.example");
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.listen = format!("127.0.0.1:{port}");
    // Listeners close after a third of the grace: 5 s to observe the 503.
    config.shutdown_grace = "15s".to_owned();
    let config_path = config.write(dir.path());
    let addr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chatgate binary starts");
    eventually("chatgate answers /readyz 200", || async {
        match TestClient::connect(addr, Alpn::H1).await {
            Ok(mut c) => c.get("/readyz", &[]).await.0 == StatusCode::OK,
            Err(_) => false,
        }
    })
    .await;

    // An SSE stream is open and has delivered its first event.
    let mut sse = TestClient::connect(addr, Alpn::H1).await.unwrap();
    upstream.release_sse(1);
    let response = sse
        .send(
            Request::get("/sse?events=3")
                .header("cookie", &user.cookie)
                .body(client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut seen = String::new();
    while !seen.contains("\"n\":1") {
        let frame = tokio::time::timeout(HANG_GUARD, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // During the drain: not ready, but still answering. `kill` returns
    // before the signal is handled, so poll until the drain has begun.
    let drained = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    eventually(
        "/readyz turns 503 while connections are still accepted",
        || {
            let drained = drained.clone();
            async move {
                let mut probe = TestClient::connect(addr, Alpn::H1)
                    .await
                    .expect("still accepting during the first third of the grace");
                let (status, _, text) = probe.get("/readyz", &[]).await;
                if status != StatusCode::SERVICE_UNAVAILABLE {
                    return false;
                }
                *drained.lock().unwrap() = String::from_utf8_lossy(&text).into_owned();
                true
            }
        },
    )
    .await;
    assert!(drained.lock().unwrap().contains("draining"));

    // Then the listener closes: new connections are refused.
    eventually("new connections refused", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;

    // The open stream still gets its remaining events and its end.
    upstream.release_sse(2);
    while let Some(frame) = tokio::time::timeout(HANG_GUARD, body.frame())
        .await
        .unwrap()
    {
        seen.push_str(&String::from_utf8_lossy(
            frame.unwrap().data_ref().unwrap_or(&Default::default()),
        ));
    }
    assert!(
        seen.contains("\"n\":2") && seen.contains("\"n\":3"),
        "{seen}"
    );

    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "chatgate exits 0 after draining: {exit}");
}
