//! Each of the four timeouts, proven against a local server that stalls in that phase; pooling;
//! and the caching DNS resolver, against a local DNS server that counts queries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use super::*;
use crate::policy::HumanDuration;
use crate::send::ErrorKind;

const SHORT: Duration = Duration::from_millis(300);

fn timeouts() -> Timeouts {
    Timeouts {
        connect: HumanDuration::millis(300),
        tls_handshake: HumanDuration::millis(300),
        response_header: HumanDuration::millis(300),
        request: HumanDuration::millis(1500),
    }
}

fn client(base: &str) -> HttpClient {
    HttpClient::new(base, &timeouts(), &Pool::default()).expect("client builds")
}

/// Runs `f` and checks it failed with `phase`'s timeout, within `[bound, bound + slack)`.
async fn expect_timeout<F>(f: F, phase: Phase, bound: Duration)
where
    F: Future<Output = Result<HttpResponse, HttpError>>,
{
    let start = Instant::now();
    let result = f.await;
    let took = start.elapsed();
    match result {
        Err(HttpError::Timeout { phase: p, .. }) => assert_eq!(p, phase, "{result:?}"),
        other => panic!("expected a {phase:?} timeout, got {other:?}"),
    }
    assert!(took >= bound, "{phase:?} fired early: {took:?} < {bound:?}");
    assert!(
        took < bound + Duration::from_millis(400),
        "{phase:?} fired late: {took:?}"
    );
}

/// A listener whose accept queue is full, so further SYNs are dropped and connects hang.
async fn black_hole() -> (SocketAddr, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => {
                // The queue is full. Keep the listener open (never accepted) by leaking it
                // into a task that lives as long as the test runtime.
                tokio::spawn(async move {
                    let _keep = listener;
                    std::future::pending::<()>().await;
                });
                return (addr, held);
            }
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

#[tokio::test]
async fn connect_timeout_against_a_full_accept_queue() {
    let (addr, _held) = black_hole().await;
    let c = client(&format!("http://{addr}"));
    expect_timeout(c.get("/cgi-bin/x"), Phase::Connect, SHORT).await;
}

/// Accepts connections and reads whatever comes, never writing a byte.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_timeout_against_a_server_that_never_answers_the_hello() {
    let addr = silent_server().await;
    let c = client(&format!("https://{addr}"));
    let err = c.get("/").await.expect_err("no handshake");
    assert_eq!(err.kind(), ErrorKind::TimeoutTls, "{err}");
    assert!(err.never_sent());
    expect_timeout(c.get("/"), Phase::TlsHandshake, SHORT).await;
}

#[tokio::test]
async fn response_header_timeout_against_a_server_that_never_answers() {
    let addr = silent_server().await;
    let c = client(&format!("http://{addr}"));
    expect_timeout(
        c.post_json("/cgi-bin/message/template/send", Bytes::from_static(b"{}")),
        Phase::ResponseHeader,
        SHORT,
    )
    .await;
}

/// Answers every request head with `response`, counting connections.
async fn scripted_server(response: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    // One answer per request head (bodies here are tiny and arrive with it).
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn request_timeout_when_the_body_stalls_after_the_headers() {
    let (addr, _) = scripted_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"errcode\":",
    )
    .await;
    let c = client(&format!("http://{addr}"));
    expect_timeout(c.get("/"), Phase::Request, Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (addr, connections) = scripted_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"errcode\":0}",
    )
    .await;
    let c = client(&format!("http://{addr}"));
    for _ in 0..5 {
        let r = c.get("/").await.expect("answer");
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
}

#[tokio::test]
async fn refused_connections_are_transport_errors_never_sent() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let err = client(&format!("http://{addr}"))
        .get("/")
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert!(err.never_sent(), "{err:?}");
    assert!(!err.to_string().contains("access_token"));
}

/// A DNS server on 127.0.0.1 answering every A query with 127.0.0.1 (TTL 300), counting them.
async fn dns_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
    let addr = socket.local_addr().expect("addr");
    let queries = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&queries);
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut answer = Message::new();
            answer
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_op_code(query.op_code())
                .set_recursion_desired(true)
                .set_recursion_available(true)
                .set_response_code(ResponseCode::NoError);
            for q in query.queries() {
                answer.add_query(q.clone());
                if q.query_type() == RecordType::A {
                    answer.add_answer(Record::from_rdata(
                        q.name().clone(),
                        300,
                        RData::A(A::new(127, 0, 0, 1)),
                    ));
                }
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    (addr, queries)
}

#[tokio::test]
async fn dns_answers_are_cached() {
    let (dns, queries) = dns_server().await;
    let (http, connections) =
        scripted_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .await;
    let mut config = ResolverConfig::new();
    config.add_name_server(NameServerConfig::new(dns, Protocol::Udp));
    let mut opts = ResolverOpts::default();
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4Only;
    let c = HttpClient::with_dns(
        &format!("http://wechat.example.test:{}", http.port()),
        &timeouts(),
        &Pool::default(),
        (config, opts),
    )
    .expect("client");
    for _ in 0..3 {
        assert_eq!(c.get("/").await.expect("answer").status, 200);
    }
    // `Connection: close` forces a new connection (and a lookup) for every request.
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    assert_eq!(
        queries.load(Ordering::SeqCst),
        1,
        "later lookups come from the cache"
    );
}
