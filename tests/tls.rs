//! TLS against a real server, with certificates made by the `openssl` command: gRPC (HTTP/2,
//! ALPN h2) and REST (HTTP/1.1) over TLS, mutual TLS refusing a client without a certificate,
//! a key that is not the certificate's refused at start-up, and a certificate rotated while a
//! client stays connected. (The same with grpcurl, curl and tritonclient is still to be
//! written in tests/interop/.)
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{publish_model_file, scale_model};
use predictd::edge::tls::{ClientAuth, TlsFiles};
use predictd::proto::inference as kserve;
use predictd::server::{App, ServeConfig, ServeError};
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and certificates it signed: `name.pem`/`name.key` for each of `leaves` (name, CN,
/// extended key usage).
fn make_certs(dir: &Path, leaves: &[(&str, &str, &str)]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=predictd test CA",
        ],
    );
    for (name, cn, usage) in leaves {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

struct Setup {
    dir: PathBuf,
    models: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap().keep();
    make_certs(
        &dir,
        &[
            ("server", "first", "serverAuth"),
            ("rotated", "second", "serverAuth"),
            ("client", "a client", "clientAuth"),
        ],
    );
    let models = dir.join("models");
    publish_model_file(&models, "scale", 1, &scale_model(2.0));
    Setup { dir, models }
}

fn files(setup: &Setup, client_ca: bool) -> TlsFiles {
    TlsFiles {
        cert: setup.dir.join("live.pem"),
        key: setup.dir.join("live.key"),
        client_ca: client_ca.then(|| setup.dir.join("ca.pem")),
        client_auth: ClientAuth::Required,
    }
}

/// Installs `name`'s certificate as the one the server reads, renamed in as a rotation would.
fn install(setup: &Setup, name: &str) {
    for ext in ["pem", "key"] {
        let staged = setup.dir.join(format!("staged.{ext}"));
        std::fs::copy(setup.dir.join(format!("{name}.{ext}")), &staged).unwrap();
        std::fs::rename(&staged, setup.dir.join(format!("live.{ext}"))).unwrap();
    }
}

/// A TLS server on ephemeral ports; stops when dropped.
struct Running {
    addr: std::net::SocketAddr,
    http_addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn tls_server(setup: &Setup, client_ca: bool) -> Running {
    install(setup, "server");
    let mut config = ServeConfig::new(&setup.models);
    config.scheduler.workers = 1;
    config.tls = Some(files(setup, client_ca));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = App::new(config).unwrap().with_http(http);
    tokio::spawn(async move {
        app.serve(grpc, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let client = client_ca.then_some("client");
    let started = Instant::now();
    loop {
        if let Ok(stream) = connect(setup, http_addr, b"http/1.1", client).await
            && rest_get(stream, "/v2/health/ready").await == "HTTP/1.1 200 OK"
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        addr,
        http_addr,
        _stop: stop,
    }
}

/// A TLS connection to `addr` trusting the test CA, offering `alpn`, with `client`'s
/// certificate if given.
async fn connect(
    setup: &Setup,
    addr: std::net::SocketAddr,
    alpn: &[u8],
    client: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(setup.dir.join("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(name) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(setup.dir.join(format!("{name}.pem"))).unwrap()],
                PrivateKeyDer::from_pem_file(setup.dir.join(format!("{name}.key"))).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // A TLS 1.3 server checks the client's certificate after the client's handshake ends:
    // a refusal shows on the first read.
    stream.flush().await?;
    Ok(stream)
}

/// The CN of the certificate the server presented on `stream`.
fn served_cn(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let der = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    // The CN is printable text in the DER; the test's two CNs are distinct words.
    let text = String::from_utf8_lossy(&der).into_owned();
    ["first", "second"]
        .into_iter()
        .find(|cn| text.contains(cn))
        .unwrap_or("?")
        .to_string()
}

/// An HTTP/2 client on `stream`.
async fn grpc_on(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> h2::client::SendRequest<bytes::Bytes> {
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN chose h2"
    );
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    client
}

/// One `ServerMetadata` call on `client`: its gRPC status and its framed reply.
async fn server_metadata(client: &mut h2::client::SendRequest<bytes::Bytes>) -> (i32, Vec<u8>) {
    use predictd::proto::methods::grpc_inference_service as m;
    let request = http::Request::post(format!("https://localhost{}", m::SERVER_METADATA))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (response, mut send) = ready.send_request(request, false).unwrap();
    let body = kserve::ServerMetadataRequest {}.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    send.send_data(framed.into(), true).unwrap();
    let response = response.await.unwrap();
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    let code = trailers["grpc-status"].to_str().unwrap().parse().unwrap();
    (code, data)
}

/// A REST GET of `path` on `stream`, HTTP/1.1: the status line.
async fn rest_get(
    mut stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> String {
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn grpc_and_rest_answer_over_tls_and_plaintext_is_refused() {
    let setup = setup();
    let server = tls_server(&setup, false).await;
    let stream = connect(&setup, server.addr, b"h2", None).await.unwrap();
    assert_eq!(served_cn(&stream), "first");
    let mut grpc = grpc_on(stream).await;
    let (code, data) = server_metadata(&mut grpc).await;
    assert_eq!(code, 0);
    let reply = kserve::ServerMetadataResponse::decode(&data[5..]).unwrap();
    assert_eq!(reply.name, "predictd");
    let rest = connect(&setup, server.http_addr, b"http/1.1", None)
        .await
        .unwrap();
    assert_eq!(rest_get(rest, "/v2/health/ready").await, "HTTP/1.1 200 OK");
    // A plaintext client gets no answer from a TLS port.
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), async {
        let mut tcp = tokio::net::TcpStream::connect(server.http_addr)
            .await
            .unwrap();
        tcp.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        (String::from_utf8_lossy(&answer).into_owned(), ())
    })
    .await
    .expect("the server closes a plaintext connection");
    assert!(!status.contains("200 OK"), "{status}");
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_accepts_one_with() {
    let setup = setup();
    let server = tls_server(&setup, true).await;
    let refused = async {
        let mut stream = connect(&setup, server.http_addr, b"http/1.1", None).await?;
        stream
            .write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    }
    .await;
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(Vec::is_empty),
        "no certificate, no answer: {refused:?}"
    );
    let stream = connect(&setup, server.http_addr, b"http/1.1", Some("client"))
        .await
        .unwrap();
    assert_eq!(
        rest_get(stream, "/v2/health/ready").await,
        "HTTP/1.1 200 OK"
    );
    let stream = connect(&setup, server.addr, b"h2", Some("client"))
        .await
        .unwrap();
    assert_eq!(server_metadata(&mut grpc_on(stream).await).await.0, 0);
}

#[tokio::test]
async fn a_key_that_is_not_the_certificates_is_refused_at_start_up() {
    let setup = setup();
    install(&setup, "server");
    std::fs::copy(setup.dir.join("rotated.key"), setup.dir.join("live.key")).unwrap();
    let mut config = ServeConfig::new(&setup.models);
    config.tls = Some(files(&setup, false));
    let error = App::new(config).expect_err("a mismatched key");
    assert!(matches!(error, ServeError::Tls(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("live.key") && message.contains("not the private key"),
        "{message}"
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_while_old_ones_go_on() {
    let setup = setup();
    let server = tls_server(&setup, false).await;
    let stream = connect(&setup, server.addr, b"h2", None).await.unwrap();
    assert_eq!(served_cn(&stream), "first");
    let mut kept = grpc_on(stream).await;
    assert_eq!(server_metadata(&mut kept).await.0, 0);
    // A broken file changes nothing: what served goes on.
    std::fs::write(setup.dir.join("live.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let again = connect(&setup, server.addr, b"h2", None).await.unwrap();
    assert_eq!(served_cn(&again), "first");
    install(&setup, "rotated");
    let started = Instant::now();
    loop {
        let fresh = connect(&setup, server.addr, b"h2", None).await.unwrap();
        if served_cn(&fresh) == "second" {
            assert_eq!(server_metadata(&mut grpc_on(fresh).await).await.0, 0);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the rotated certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection made before the rotation is still served.
    assert_eq!(server_metadata(&mut kept).await.0, 0);
}
