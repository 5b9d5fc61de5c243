//! Shared support for chatgate's integration tests: real stand-in servers, a real Redis and
//! TLS clients on real sockets (each test file does `mod support;`).
#![allow(dead_code)]

pub mod chatgate;
pub mod client;
pub mod dashboard;
pub mod haproxy;
pub mod librechat;
pub mod librechat_chat;
pub mod librechat_lists;
pub mod postgres;
pub mod redis;
pub mod ssr;
pub mod supabase;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Installs aws-lc-rs as the process-wide rustls provider; safe to call from every test.
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The program `name` on PATH, else at `fallback` (Debian's place for it); panics with the
/// package to install when neither exists.
pub fn find_program(name: &str, fallback: &str, package: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    on_path
        .or_else(|| Some(PathBuf::from(fallback)).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH nor at {fallback} (apt-get install {package})")
        })
}
