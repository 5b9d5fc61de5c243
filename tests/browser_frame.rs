//! A real browser frames chatgate (SPEC sections 5, 7 and 8; issue 6).
//!
//! Headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `tests/browser/`) opens a dashboard on `https://127.0.0.1:A` whose iframe
//! is the hand-off URL on `https://localhost:G`, another site. Inside the
//! frame the stand-in LibreChat page must load, its XHR must pass chatgate
//! with the session the hand-off created, and the `SameSite=Strict` cookies
//! that page's response set must come back on that XHR: a browser only
//! stores and sends them in a cross-site frame after chatgate rewrote them to
//! `SameSite=None; Secure; Partitioned`. A second dashboard on
//! `https://127.0.0.1:B`, an origin not in `iframe.allowed_origins`, frames
//! chatgate too, and Chromium must refuse to render it (CSP
//! `frame-ancestors`).
//!
//! Needs `/usr/bin/chromium` and `npm ci --prefix tests/browser`
//! (`scripts/test.sh` provides both); fails, never skips, without them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use support::chatgate::{Gate, GateConfig, SignedIn};
use support::client::{Alpn, TestClient};
use support::dashboard::{framing_page, StandInDashboard};
use support::librechat::{Recorded, StandInLibreChat, APP_MARKER, APP_XHR_PATH};
use support::supabase::{SigningKind, StandInSupabase};
use tokio::io::AsyncWriteExt;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The site of both dashboards (ports are not part of a site): the key of
/// the partition that chatgate's cookies live in when they frame it.
const DASHBOARD_SITE: &str = "https://127.0.0.1";

/// How long the browser waits for one frame; only stops a broken run from hanging.
const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_frames_librechat_cross_site_and_no_other_origin_can() {
    require_browser();
    let out = output_dir();

    // Given chatgate on https://localhost:G, framable by dashboard A only,
    // with cross-site cookies.
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let librechat = StandInLibreChat::start("lc-1").await;
    librechat.serve_app_at_root();
    let allowed = StandInDashboard::start().await;
    let denied = StandInDashboard::start().await;
    let port = support::free_port();
    let mut config = GateConfig::new(&[librechat.url()]).with_supabase(&supabase);
    config.listen = format!("127.0.0.1:{port}");
    config.public_url = format!("https://localhost:{port}");
    config.allowed_origins = vec![allowed.origin()];
    config.cross_site = true;
    let gate = Gate::start(config).await;
    let chatgate_origin = format!("https://localhost:{port}");

    // and each dashboard's server asked chatgate for its user's hand-off URL
    // (two users: a hand-off is single use, and minted tokens are reused per user).
    let ada = SignedIn::new(&supabase, "ada@acme.example");
    let bob = SignedIn::new(&supabase, "bob@acme.example");
    let ada_url = handoff_url(&gate, &ada).await;
    let bob_url = handoff_url(&gate, &bob).await;
    assert!(ada_url.starts_with(&format!("{chatgate_origin}/?token=")));
    allowed.set_page(framing_page("Acme dashboard", &ada_url));
    denied.set_page(framing_page("A site chatgate does not allow", &bob_url));

    // When Chromium opens both dashboards,
    let screenshot = out.join("frame.png");
    let profile = tempfile::tempdir().unwrap();
    let report = drive_browser(json!({
        "chromium": CHROMIUM,
        "userDataDir": profile.path(),
        "screenshot": screenshot,
        "chatgateOrigin": chatgate_origin,
        "allowedUrl": allowed.url(),
        "deniedUrl": denied.url(),
        "timeoutMs": FRAME_TIMEOUT.as_millis() as u64,
    }))
    .await;
    println!("screenshot of the working frame: {}", screenshot.display());
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    let requests = librechat.requests();
    let ada_id = ada.session.user_id();
    let bob_id = bob.session.user_id();

    // then in the allowed dashboard the frame shows the stand-in LibreChat page,
    let frame = only_frame(&report["allowed"], &report);
    assert_eq!(
        frame["app"], APP_MARKER,
        "the frame is not the stand-in page: {report:#}"
    );
    assert!(
        frame["url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&chatgate_origin) && !u.contains("token=")),
        "the frame did not end on chatgate's URL without the hand-off token: {frame}"
    );
    // whose XHR passed chatgate as Ada,
    let result = &frame["result"];
    assert_eq!(frame["status"], "ok", "the XHR failed: {report:#}");
    assert_eq!(result["http_status"], 200);
    assert_eq!(result["user_id"], ada_id, "{result}");
    // and carried back the Strict cookies the page's response had set.
    let page = find(&requests, ada_id, |r| r.path_and_query == "/")
        .unwrap_or_else(|| panic!("the page load never reached LibreChat: {requests:#?}"));
    let first = page.header_all("cookie").join("; ");
    assert!(
        !first.contains("refreshToken") && !first.contains("token_provider"),
        "the first page load already had LibreChat's cookies: {first:?}"
    );
    let xhr = find(&requests, ada_id, |r| r.path_and_query == APP_XHR_PATH)
        .unwrap_or_else(|| panic!("the XHR never reached LibreChat: {requests:#?}"));
    let cookie = xhr.header_all("cookie").join("; ");
    for pair in ["refreshToken=abc", "token_provider=librechat"] {
        assert!(
            cookie.contains(pair),
            "the XHR came without LibreChat's {pair}, got cookie {cookie:?}"
        );
    }
    assert!(
        !cookie.contains("chatgate_session"),
        "chatgate's cookie reached LibreChat: {cookie:?}"
    );
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 0));
    // Chromium kept chatgate's and LibreChat's cookies, each in the
    // dashboard's partition (it stores no unpartitioned cookie from a
    // cross-site frame; see the report in the output folder).
    let cookies = report["cookies"].as_array().expect("cookies");
    for name in ["chatgate_session", "refreshToken", "token_provider"] {
        let cookie = cookies
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("Chromium did not keep {name}: {cookies:#?}"));
        assert_eq!(cookie["sameSite"], "None", "{cookie}");
        assert_eq!(cookie["partitionKey"], DASHBOARD_SITE, "{cookie}");
    }

    // In the other dashboard the frame's navigation reached LibreChat as Bob
    // (so it was not a sign-in failure), but Chromium refused to render the
    // answer: the frame is not the stand-in page and its script never ran.
    assert!(
        find(&requests, bob_id, |r| r.path_and_query == "/").is_some(),
        "the denied frame's navigation never reached LibreChat: {requests:#?}"
    );
    let frame = only_frame(&report["denied"], &report);
    assert_ne!(
        frame["app"], APP_MARKER,
        "Chromium rendered chatgate: {report:#}"
    );
    assert!(
        find(&requests, bob_id, |r| r.path_and_query == APP_XHR_PATH).is_none(),
        "the page ran inside a dashboard chatgate does not allow: {requests:#?}"
    );
    let refusal = report["denied"]["refusal"].as_str().unwrap_or_else(|| {
        panic!("Chromium logged no frame-ancestors refusal: {report:#}");
    });
    assert!(
        refusal.contains(&chatgate_origin) && refusal.contains(&allowed.origin()),
        "{refusal}"
    );
}

/// Fails (never skips) when the browser or its driver is not installed.
fn require_browser() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: this test needs Debian's chromium \
         (`apt-get install chromium`; scripts/test.sh installs it when run as root)"
    );
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` \
         from the crate root (scripts/test.sh does)"
    );
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `<target>/browser-test/`, beside the build (honours `CARGO_TARGET_DIR`):
/// the test binary is `<target>/<profile>/deps/browser_frame-<hash>`.
fn output_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps");
    let dir = target.join("browser-test");
    std::fs::create_dir_all(&dir).expect("create the browser test's output folder");
    dir
}

/// What the dashboard's server does: `GET /api/librechat/auth` with the
/// user's Supabase session, answered with the URL to frame.
async fn handoff_url(gate: &Gate, user: &SignedIn) -> String {
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    let (status, _, body) = client.get("/api/librechat/auth", &[user.header()]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let body: Value = serde_json::from_slice(&body).unwrap();
    body["url"].as_str().expect("url").to_owned()
}

/// Runs `tests/browser/frame.mjs` with `input` and returns its report.
async fn drive_browser(input: Value) -> Value {
    let mut child = tokio::process::Command::new("node")
        .arg("frame.mjs")
        .current_dir(browser_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}); this test needs Node 20 or later"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the browser run did not finish in 120 s")
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "frame.mjs failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "frame.mjs printed no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The one iframe a dashboard visit reported.
fn only_frame<'a>(visit: &'a Value, report: &Value) -> &'a Value {
    let frames = visit["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 1, "expected one iframe: {report:#}");
    &frames[0]
}

/// The first request LibreChat received on behalf of `user_id` that matches.
fn find<'a>(
    requests: &'a [Recorded],
    user_id: &str,
    matches: impl Fn(&Recorded) -> bool,
) -> Option<&'a Recorded> {
    requests
        .iter()
        .find(|r| r.header("x-chatgate-user-id") == Some(user_id) && matches(r))
}
