//! A fast HTTPS origin for the interception benchmark (`benches/intercept.sh`): HTTP/1.1
//! keep-alive, any request answered with a fixed chat-completion-shaped JSON. Not part of
//! the product; the lab's Python mock is too slow to measure a proxy against.
//!
//! Usage: bench_upstream ADDR:PORT CERT.pem KEY.pem

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, cert, key] = args.as_slice() else {
        return Err("usage: bench_upstream ADDR:PORT CERT.pem KEY.pem".into());
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(addr.as_str()).await?;
        println!("bench upstream serving on {addr}");
        loop {
            let (s, _) = l.accept().await?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(s).await else { return };
                let mut buf = Vec::with_capacity(8192);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
                    BODY.len()
                );
                loop {
                    // One request: head, then its Content-Length body.
                    let (head_len, body_len, close) = loop {
                        let mut headers = [httparse::EMPTY_HEADER; 64];
                        let mut req = httparse::Request::new(&mut headers);
                        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                            let cl = req
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                                .unwrap_or(0usize);
                            let close = req.headers.iter().any(|h| {
                                h.name.eq_ignore_ascii_case("connection")
                                    && h.value.eq_ignore_ascii_case(b"close")
                            });
                            break (n, cl, close);
                        }
                        match tls.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    };
                    while buf.len() < head_len + body_len {
                        match tls.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                    buf.drain(..head_len + body_len);
                    if tls.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    if close {
                        let _ = tls.shutdown().await;
                        return;
                    }
                }
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}
