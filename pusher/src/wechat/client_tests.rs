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

/// Answers every request head after `delay`, counting connections opened and connections the
/// client closed.
async fn slow_server(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"errcode\":0}";
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (counter, ends) = (Arc::clone(&connections), Arc::clone(&closed));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let ends = Arc::clone(&ends);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        ends.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        tokio::time::sleep(delay).await;
                        if s.write_all(ANSWER).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, connections, closed)
}

/// When the load falls from 20 requests at once to one at a time, the connections it no
/// longer needs close one by one, at most `1 + w × closesPerSecond` in any window of `w`
/// seconds (hyper's own sweep closed them all at one tick), the one in use stays, and not one
/// of the requests made meanwhile (racing the closes) fails. Counted, not timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_gradually_and_no_request_fails() {
    const AT_ONCE: usize = 20;
    const RATE: u32 = 10;
    let (addr, connections, server_saw_closed) = slow_server(Duration::from_millis(100)).await;
    let t = Timeouts {
        request: HumanDuration::millis(400),
        ..timeouts()
    };
    let pool = Pool {
        idle_timeout: HumanDuration::millis(200),
        closes_per_second: RATE,
        ..Pool::default()
    };
    let counters = ClientCounters::default();
    let c = Arc::new(
        HttpClient::counted(&format!("http://{addr}"), &t, &pool, counters.clone())
            .expect("client builds"),
    );
    let burst: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.get("/").await })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.expect("joins").expect("answer").status, 200);
    }
    let opened = counters.opened.get();
    assert!(opened >= 10, "the burst opened {opened} connections");
    // One request at a time until every surplus connection closed (bounded in count).
    let mut samples = vec![(Instant::now(), counters.closed_idle.get())];
    for _ in 0..300 {
        if counters.closed_idle.get() >= opened - 1 {
            break;
        }
        let r = c
            .get("/")
            .await
            .expect("no request racing the closes fails");
        assert_eq!(r.status, 200);
        samples.push((Instant::now(), counters.closed_idle.get()));
    }
    let closed = counters.closed_idle.get();
    assert_eq!(closed, opened - 1, "all but the connection in use closed");
    assert_eq!(counters.closed_other.get(), 0, "no connection broke");
    assert_eq!(
        counters.opened.get(),
        opened,
        "the single requests opened none"
    );
    assert_eq!(connections.load(Ordering::SeqCst) as u64, opened);
    // The closes are real: the server sees each connection end (bounded wait).
    for _ in 0..100 {
        if server_saw_closed.load(Ordering::SeqCst) as u64 >= closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server_saw_closed.load(Ordering::SeqCst) as u64, closed);
    // Closes in any window of at most one second: at most 1 + RATE.
    for (i, (t0, c0)) in samples.iter().enumerate() {
        for (t1, c1) in &samples[i + 1..] {
            if t1.duration_since(*t0) <= Duration::from_secs(1) {
                assert!(
                    c1 - c0 <= 1 + u64::from(RATE),
                    "{} closes within {:?}",
                    c1 - c0,
                    t1.duration_since(*t0)
                );
            }
        }
    }
}
