//! The `chatgate` command line: exit codes and one-line errors that name the
//! key or file at fault (SPEC section 2).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::chatgate::GateConfig;
use support::librechat::StandInLibreChat;
use support::supabase::{SigningKind, StandInSupabase};

fn chatgate(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args(args)
        .current_dir(dir)
        .env_remove("CHATGATE_CONFIG")
        .output()
        .expect("run chatgate")
}

/// The one error line (`chatgate: …`); start-up warnings may precede it as log lines.
fn stderr_line(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("chatgate: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {text}");
    errors[0].to_owned()
}

#[test]
fn bad_configs_exit_2_naming_the_key_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisen = \"0.0.0.0:1\"\n", "server.lisen"),
        (
            "[server]\nshutdown_grace = \"3x\"\n",
            "server.shutdown_grace",
        ),
        (
            "[server]\ntrusted_proxies = [\"10.0.0.0/99\"]\n",
            "server.trusted_proxies",
        ),
        (
            "[tls]\ndev_self_signed = false\ncert = \"missing.pem\"\nkey = \"missing-key.pem\"\n",
            "missing.pem",
        ),
    ];
    for (text, named) in cases {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let output = chatgate(&["--config", "bad.toml"], dir.path());
        assert_eq!(output.status.code(), Some(2), "{text}");
        let line = stderr_line(&output);
        assert!(line.contains(named), "{text} -> {line}");
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = chatgate(&["--config", "nope.toml"], dir.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_line(&output).contains("nope.toml"));
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = chatgate(&["--no-such-flag"], dir.path());
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn gen_cert_writes_a_certificate_and_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = chatgate(
        &["gen-cert", "--out", "out", "--host", "chat.example.test"],
        dir.path(),
    );
    assert!(output.status.success(), "{output:?}");
    let cert = std::fs::read_to_string(dir.path().join("out/cert.pem")).unwrap();
    let key = std::fs::read_to_string(dir.path().join("out/key.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(key.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn check_passes_with_a_healthy_upstream_and_fails_without() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let dir = tempfile::tempdir().unwrap();
    GateConfig::new(&[upstream.url()])
        .with_supabase(&supabase)
        .write(dir.path());
    let path = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || chatgate(&["check"], &path))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("ok   upstream {}", upstream.url())),
        "{stdout}"
    );

    upstream.stop().await;
    let path = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || chatgate(&["check"], &path))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL upstream"), "{stdout}");

    supabase.stop().await;
    let path = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || chatgate(&["check"], &path))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL supabase auth"), "{stdout}");
}

#[test]
fn token_mint_and_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[librechat]\njwt_secret = \"{}\"\n",
        support::chatgate::LIBRECHAT_SECRET
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let output = chatgate(
        &[
            "token",
            "mint",
            "--sub",
            "u-1",
            "--email",
            "ada@acme.example",
            "--org-domain",
            "acme.example",
        ],
        dir.path(),
    );
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let output = chatgate(&["token", "verify", &token], dir.path());
    assert!(output.status.success(), "{output:?}");
    let claims: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(claims["sub"], "u-1");
    assert_eq!(claims["organization"]["domain"], "acme.example");
    assert_eq!(claims["username"], "ada");

    let output = chatgate(&["token", "verify", "not.a.token"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("invalid"));
}
