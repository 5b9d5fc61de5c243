//! A stand-in dashboard for browser tests: an HTTPS server on 127.0.0.1 (its own self-signed
//! certificate) that answers every `GET` with one HTML page, typically one that frames
//! chatgate. Each instance is its own origin (`https://127.0.0.1:PORT`); all of them are one
//! site, and a different site from chatgate's `https://localhost:PORT`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub struct StandInDashboard {
    addr: SocketAddr,
    page: Arc<Mutex<String>>,
    accept_task: JoinHandle<()>,
}

impl StandInDashboard {
    /// Starts on a free port of 127.0.0.1 with an empty page; [`Self::set_page`] fills it
    /// (the page usually needs chatgate's address, and chatgate needs this origin first).
    pub async fn start() -> StandInDashboard {
        super::init_crypto();
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("generate dashboard certificate");
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![generated.cert.der().clone()], key)
            .expect("dashboard TLS config");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind dashboard");
        let addr = listener.local_addr().expect("local_addr");
        let page = Arc::new(Mutex::new(String::new()));
        let served = page.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let page = served.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| answer(page.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        StandInDashboard {
            addr,
            page,
            accept_task,
        }
    }

    /// `https://127.0.0.1:PORT`
    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("{}/", self.origin())
    }

    pub fn set_page(&self, html: String) {
        *self.page.lock().unwrap() = html;
    }
}

impl Drop for StandInDashboard {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn answer(
    page: Arc<Mutex<String>>,
    _req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let html = page.lock().unwrap().clone();
    let mut res = Response::new(Full::new(Bytes::from(html)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(res)
}

/// A dashboard page titled `title` that frames `src` in `<iframe id="chat">`.
pub fn framing_page(title: &str, src: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<style>
  body {{ font: 15px/1.4 sans-serif; margin: 16px; background: #f8fafc; }}
  iframe {{ width: 760px; height: 360px; border: 2px solid #0d9488; border-radius: 6px; }}
</style></head>
<body>
<h1>{title}</h1>
<p>The frame below is chatgate, on another site.</p>
<iframe id="chat" src="{src}"></iframe>
</body>
</html>
"#,
        title = html_escape(title),
        src = html_escape(src),
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
