//! The store contract (`wxpush_pusher::store::contract`) against the Redis store on a real
//! `redis-server` with AOF on, plus the same suite on a 3-master Redis Cluster; and the embedded
//! store once more from outside the crate, so that both backends are seen passing one suite.

mod embedded {
    wxpush_pusher::store_contract!(wxpush_pusher::store::contract::Embedded::temp());
}

/// Starts a server in a thread of its own that lives as long as the test process (each check
/// uses a key prefix of its own), so that every test's runtime can reach it; returns its URL.
/// `start` returns the URL and the server handle, which the thread keeps.
fn lifelong(start: fn(&tokio::runtime::Runtime) -> (String, Box<dyn std::any::Any>)) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (url, _server) = start(&rt);
        tx.send(url).expect("send the url");
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("the server started")
}

mod redis {
    use std::sync::OnceLock;

    use wxpush_tests::redis::RedisServer;

    fn url() -> String {
        static URL: OnceLock<String> = OnceLock::new();
        URL.get_or_init(|| {
            super::lifelong(|rt| {
                let server = rt.block_on(RedisServer::start());
                server.reap_with_this_process();
                (server.url(), Box::new(server))
            })
        })
        .clone()
    }

    wxpush_pusher::store_contract!(wxpush_pusher::store::contract::Redis::new(&url(), false));
}

mod redis_cluster {
    use std::sync::OnceLock;

    use wxpush_tests::redis::RedisCluster;

    fn url() -> String {
        static URL: OnceLock<String> = OnceLock::new();
        URL.get_or_init(|| {
            super::lifelong(|rt| {
                let cluster = rt.block_on(RedisCluster::start());
                cluster.reap_with_this_process();
                (cluster.url(), Box::new(cluster))
            })
        })
        .clone()
    }

    wxpush_pusher::store_contract!(wxpush_pusher::store::contract::Redis::new(&url(), true));
}

mod auth {
    use std::time::Duration;

    use wxpush_pusher::store::redis::{RedisOptions, RedisStore};
    use wxpush_pusher::store::{Store, StoreError};
    use wxpush_tests::redis::{RedisServer, store_options};

    fn options(url: String) -> RedisOptions {
        RedisOptions {
            claim_idle: Duration::from_secs(1),
            ..store_options(url, "auth", "auth-test")
        }
    }

    /// An ACL user and password come from the URL; a wrong password is named in one line that
    /// never shows it; an unreachable server is named the same way.
    #[tokio::test]
    async fn acl_user_from_the_url_and_errors_without_the_password() {
        let server = RedisServer::start_with(&[
            "--user",
            "pusher",
            "on",
            ">s3cret-pass",
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ])
        .await;
        let good = format!("redis://pusher:s3cret-pass@127.0.0.1:{}/0", server.port);
        let store = RedisStore::connect(options(good)).await.expect("connects");
        assert!(store.is_healthy());
        let bad = format!("redis://pusher:wrong-pass@127.0.0.1:{}/0", server.port);
        let err = RedisStore::connect(options(bad))
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Storage(_)));
        assert!(!text.contains("wrong-pass"), "{text}");
        assert!(text.contains("redis://pusher:****@127.0.0.1"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        let port = wxpush_tests::free_port();
        let gone = format!("redis://pusher:s3cret-pass@127.0.0.1:{port}");
        let err = RedisStore::connect(options(gone))
            .await
            .expect_err("unreachable");
        let text = err.to_string();
        assert!(!text.contains("s3cret-pass"), "{text}");
        assert!(text.contains("cannot connect to Redis at"), "{text}");
    }
}

mod outage {
    use std::time::Duration;

    use jiff::Timestamp;
    use wxpush_pusher::message::{MessageId, Status, parse_message};
    use wxpush_pusher::store::redis::{RedisOptions, RedisStore};
    use wxpush_pusher::store::{AcceptItem, Leased, Store};
    use wxpush_tests::redis::{RedisServer, store_options};

    /// A store on `server` as the consumer `consumer`.
    async fn connect(server: &RedisServer, consumer: &str, claim_idle: Duration) -> RedisStore {
        RedisStore::connect(RedisOptions {
            claim_idle,
            ..store_options(server.url(), "outage", consumer)
        })
        .await
        .expect("connects")
    }

    /// Accepts one message.
    async fn accept_one(store: &RedisStore) -> MessageId {
        let message =
            parse_message(&serde_json::json!({"touser": "o", "template_id": "T"})).expect("valid");
        store
            .accept(vec![AcceptItem {
                message,
                idempotency_key: None,
                request_digest: None,
            }])
            .await
            .expect("accepted")[0]
            .id
    }

    /// Leases until a message comes (claimed after `claimIdle` when another lease held it).
    async fn lease_again(store: &RedisStore) -> Leased {
        wxpush_tests::wait_for(
            "the entry claimed again",
            Duration::from_secs(30),
            || async {
                store
                    .lease(1, Duration::from_millis(200))
                    .await
                    .ok()
                    .and_then(|mut l| l.pop())
            },
        )
        .await
    }

    /// An outcome whose write met a Redis outage is not lost with the write: when this pod
    /// claims the entry again, the lease carries the outcome, so the dispatcher records it
    /// instead of sending the message again.
    #[tokio::test]
    async fn an_outcome_written_during_an_outage_comes_back_with_the_next_lease() {
        let mut server = RedisServer::start().await;
        let store = connect(&server, "outage-test", Duration::from_millis(300)).await;
        let id = accept_one(&store).await;
        let leased = store.lease(1, Duration::from_secs(5)).await.expect("lease");
        assert_eq!(leased.len(), 1);
        assert!(leased[0].unrecorded.is_none());
        let mut done = leased[0].record.clone();
        done.status = Status::Delivered;
        done.attempts = 1;
        done.msgid = Some(42);
        server.kill();
        store
            .complete(leased[0].slot, done)
            .await
            .expect_err("redis is down");
        server.restart().await;
        let again = lease_again(&store).await;
        assert_eq!(again.record.id, id);
        let kept = again.unrecorded.as_deref().expect("the outcome comes back");
        assert_eq!((kept.status, kept.msgid), (Status::Delivered, Some(42)));
    }

    /// The "attempt started" record cannot be written while Redis is away: `start_attempt`
    /// fails (so the dispatcher does not send), and the lease is kept alive no longer, so this
    /// pod claims the entry again after `claimIdle`, without the record; then it is written.
    #[tokio::test]
    async fn an_attempt_start_during_an_outage_fails_and_the_message_comes_back() {
        let mut server = RedisServer::start().await;
        let store = connect(&server, "outage-start", Duration::from_millis(300)).await;
        let id = accept_one(&store).await;
        let leased = store.lease(1, Duration::from_secs(5)).await.expect("lease");
        assert_eq!(leased.len(), 1);
        server.kill();
        store
            .start_attempt(&leased[0], Timestamp::now())
            .await
            .expect_err("redis is down");
        server.restart().await;
        let again = lease_again(&store).await;
        assert_eq!((again.record.id, again.record.first_attempt_at), (id, None));
        let at = Timestamp::now();
        store.start_attempt(&again, at).await.expect("recorded");
        let rec = store.get(id).await.expect("reads").expect("kept");
        assert_eq!(rec.first_attempt_at, Some(at));
    }

    /// A lease that another pod took over (this one was too slow to keep it alive) records no
    /// start: the message is not sent from here; the pod that holds it now does it.
    #[tokio::test]
    async fn a_taken_over_lease_records_no_start() {
        let server = RedisServer::start().await;
        // Keeps its leases alive every second; the other pod claims after 300 ms idle.
        let slow = connect(&server, "slow", Duration::from_secs(3)).await;
        let fast = connect(&server, "fast", Duration::from_millis(300)).await;
        let id = accept_one(&slow).await;
        let leased = slow.lease(1, Duration::from_secs(5)).await.expect("lease");
        assert_eq!(leased.len(), 1);
        let taken = lease_again(&fast).await;
        assert_eq!(taken.record.id, id);
        slow.start_attempt(&leased[0], Timestamp::now())
            .await
            .expect_err("the lease is the other pod's");
        let rec = fast.get(id).await.expect("reads").expect("kept");
        assert_eq!(rec.first_attempt_at, None);
        let at = Timestamp::now();
        fast.start_attempt(&taken, at).await.expect("recorded");
        let rec = fast.get(id).await.expect("reads").expect("kept");
        assert_eq!(rec.first_attempt_at, Some(at));
    }
}

mod tls {
    use std::process::Command;

    use wxpush_tests::binary;
    use wxpush_tests::redis::RedisServer;

    /// `rediss://` works, with the server's certificate verified against the roots of the
    /// system (here `SSL_CERT_FILE`, which names the test's CA): the
    /// pusher's `check-config` connects over TLS and sends `PING`. Without that root it refuses
    /// in one line.
    #[tokio::test]
    async fn rediss_urls_speak_tls_with_verified_certificates() {
        let server = RedisServer::start_tls().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("pusher.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:0\nchannel: tls\napiBaseUrl: http://127.0.0.1:1\n\
                 credentials: {{appId: wx1, appSecret: s}}\nauth: {{token: 0123456789abcdef0123}}\n\
                 queue: {{redis: {{url: \"rediss://127.0.0.1:{}/0\"}}}}\n",
                server.port
            ),
        )
        .expect("config");
        let check = |cert: Option<&std::path::Path>| {
            let mut cmd = Command::new(binary("wxpush-pusher"));
            cmd.args(["check-config", "--config"]).arg(&config);
            match cert {
                Some(c) => cmd.env("SSL_CERT_FILE", c),
                None => cmd.env("SSL_CERT_FILE", dir.path().join("no-such-file.pem")),
            };
            cmd.output().expect("check-config runs")
        };
        let ok = check(Some(&server.dir.join("ca.pem")));
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let refused = check(None);
        assert!(!refused.status.success());
        let text = String::from_utf8_lossy(&refused.stderr);
        assert!(
            text.contains("cannot connect to Redis at rediss://127.0.0.1"),
            "{text}"
        );
    }
}

mod replicas {
    use std::time::Duration;

    use serde_json::json;
    use wxpush_pusher::message::parse_message;
    use wxpush_pusher::store::redis::{RedisOptions, RedisStore};
    use wxpush_pusher::store::{AcceptItem, Store, StoreError};
    use wxpush_tests::redis::{RedisServer, store_options};
    use wxpush_tests::wait_for;

    fn options(url: String, min_replicas_acked: u32) -> RedisOptions {
        RedisOptions {
            claim_idle: Duration::from_secs(1),
            min_replicas_acked,
            ..store_options(url, &format!("wait{min_replicas_acked}"), "wait-test")
        }
    }

    fn item() -> AcceptItem {
        AcceptItem {
            message: parse_message(&json!({"touser": "o-wait", "template_id": "T"}))
                .expect("valid"),
            idempotency_key: None,
            request_digest: None,
        }
    }

    /// `minReplicasAcked`: an accept is answered once that many replicas have it (`WAIT`);
    /// when fewer can, the accept fails (503 at the API) instead of answering 202.
    #[tokio::test]
    async fn accepts_wait_for_replicas() {
        let primary = RedisServer::start().await;
        let port = primary.port.to_string();
        let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
        let p = primary.port;
        wait_for(
            "the replica in sync",
            Duration::from_secs(20),
            || async move {
                let info = wxpush_tests::redis::cli(p, &["INFO", "replication"]);
                (info.contains("connected_slaves:1") && info.contains("state=online")).then_some(())
            },
        )
        .await;
        let one = RedisStore::connect(options(primary.url(), 1))
            .await
            .expect("connects");
        one.accept(vec![item()]).await.expect("one replica has it");
        let two = RedisStore::connect(options(primary.url(), 2))
            .await
            .expect("connects");
        let err = two
            .accept(vec![item()])
            .await
            .expect_err("no second replica");
        assert!(
            matches!(&err, StoreError::Storage(m) if m.contains("1 of 2 replicas")),
            "{err}"
        );
    }
}

mod permits {
    use std::time::Duration;

    use wxpush_pusher::coord::{Coordinator, Permit, RedisCoordinator};
    use wxpush_pusher::resilience::ratelimit::Gcra;
    use wxpush_pusher::store::redis::RedisStore;
    use wxpush_tests::redis::{RedisServer, store_options};

    /// Permits asked for together go to Redis in one call and are still reserved one by one,
    /// in the order asked: 10/s without a burst spaces them 100 ms apart, the shared daily
    /// quota of 15 lets exactly 15 of 20 through, and the count is kept for the next call.
    #[tokio::test]
    async fn permits_asked_together_are_reserved_each_in_order() {
        let server = RedisServer::start().await;
        let store = RedisStore::connect(store_options(server.url(), "permits", "permits-test"))
            .await
            .expect("connects");
        let coord = RedisCoordinator::new(&store);
        let rule = Gcra::new(10, 1);
        let long = Duration::from_secs(10);
        // One thread: every request is queued before the first call leaves.
        let answers: Vec<Permit> =
            futures::future::join_all((0..20).map(|_| coord.permit(rule, 15, long)))
                .await
                .into_iter()
                .map(|p| p.expect("redis answers"))
                .collect();
        let mut want = vec![Permit::Go];
        want.extend((1..15).map(|i| Permit::At(Duration::from_millis(100 * i))));
        want.extend((15..20).map(|_| Permit::QuotaSpent));
        assert_eq!(answers, want);
        assert_eq!(
            coord.permit(rule, 15, long).await.expect("answers"),
            Permit::QuotaSpent,
            "the quota's count was kept"
        );
        assert!(matches!(
            coord.permit(rule, 16, long).await.expect("answers"),
            Permit::At(_)
        ));
        assert_eq!(
            coord
                .permit(rule, 0, Duration::from_millis(1))
                .await
                .expect("answers"),
            Permit::TooFar,
            "the next permit is about 1.6 s away"
        );
    }
}

mod layout {
    use std::time::Duration;

    use jiff::Timestamp;
    use wxpush_pusher::message::{MessageId, MessageRecord, Status, parse_message};
    use wxpush_pusher::store::redis::{RedisOptions, RedisStore};
    use wxpush_pusher::store::{Leased, Store};
    use wxpush_tests::redis::{RedisServer, store_options};

    fn options(server: &RedisServer, consumer: &str, event_indexes: bool) -> RedisOptions {
        RedisOptions {
            event_indexes,
            ..store_options(server.url(), "layout", consumer)
        }
    }

    /// Leases until `n` messages came, or 20 s passed.
    async fn lease_all(store: &RedisStore, n: usize) -> Vec<Leased> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got.len() < n && std::time::Instant::now() < deadline {
            got.extend(
                store
                    .lease(n - got.len(), Duration::from_millis(200))
                    .await
                    .expect("lease"),
            );
        }
        got
    }

    fn delivered(l: &Leased, msgid: i64) -> MessageRecord {
        let mut r = l.record.clone();
        r.status = Status::Delivered;
        r.attempts += 1;
        r.msgid = Some(msgid);
        r.finished_at = Some(Timestamp::now());
        r.next_attempt_at = None;
        r
    }

    /// What a pod of the previous version left when it was killed mid-attempt, written by raw
    /// commands: a queued message not read yet; a leased one (its entry pending for the dead
    /// consumer, `lease` field `<id>` → entry); and a leased one whose start was recorded the
    /// old way, `first_attempt_at` in the record itself. A pod of this version takes the dead
    /// consumer's entries over, leases each message once (the old start kept), completes
    /// them, and leaves nothing behind: no second lease, a clean consistency check.
    #[tokio::test]
    async fn a_new_pod_finishes_what_an_old_pod_left_exactly_once() {
        let server = RedisServer::start().await;
        let base = "{layout:c}:";
        let q = format!("{base}q");
        let started = Timestamp::now() - jiff::SignedDuration::from_secs(5);
        let message =
            parse_message(&serde_json::json!({"touser": "o", "template_id": "T"})).expect("valid");
        let mut ids = Vec::new();
        server.cli(&["XGROUP", "CREATE", &q, "pushers", "0", "MKSTREAM"]);
        for n in 0..3 {
            let id = MessageId::new();
            let mut r = MessageRecord::new(id, message.clone(), None, Timestamp::now());
            if n == 2 {
                r.first_attempt_at = Some(started);
                r.budget_from = started;
            }
            let js = serde_json::to_string(&r).expect("encodes");
            server.cli(&["SET", &format!("{base}m:{id}"), &js]);
            server.cli(&["XADD", &q, "*", "id", &id.to_string()]);
            ids.push(id);
        }
        server.cli(&["SET", &format!("{base}n"), "3"]);
        // The old pod read all three and recorded the leases of the last two, then died (no
        // heartbeat key): the first one is pending without a `lease` field, as when a pod dies
        // between the two halves of a lease.
        let read = server.cli(&[
            "XREADGROUP",
            "GROUP",
            "pushers",
            "old-pod",
            "COUNT",
            "3",
            "STREAMS",
            &q,
            ">",
        ]);
        let eids: Vec<&str> = read
            .lines()
            .filter(|l| l.contains('-') && l.chars().all(|c| c.is_ascii_digit() || c == '-'))
            .collect();
        assert_eq!(eids.len(), 3, "three entries read: {read}");
        for n in 1..3 {
            server.cli(&[
                "HSET",
                &format!("{base}lease"),
                &ids[n].to_string(),
                eids[n],
            ]);
        }

        let store = RedisStore::connect(options(&server, "new-pod", true))
            .await
            .expect("connects");
        let mut leased = lease_all(&store, 3).await;
        leased.sort_by_key(|l| l.record.id);
        let mut got: Vec<MessageId> = leased.iter().map(|l| l.record.id).collect();
        got.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(got, want, "each message leased once");
        for l in &leased {
            let want = (l.record.id == ids[2]).then_some(started);
            assert_eq!(l.record.first_attempt_at, want, "{}", l.record.id);
        }
        let fresh: Vec<&Leased> = leased
            .iter()
            .filter(|l| l.record.first_attempt_at.is_none())
            .collect();
        for a in store.start_attempts(&fresh, Timestamp::now()).await {
            a.expect("the start is recorded");
        }
        let outcomes = leased
            .iter()
            .enumerate()
            .map(|(i, l)| (l.slot, delivered(l, 100 + i as i64)))
            .collect();
        for a in store.complete_many(outcomes).await {
            a.expect("completes");
        }
        assert!(
            store
                .lease(3, Duration::from_millis(500))
                .await
                .expect("lease")
                .is_empty(),
            "nothing is leased twice"
        );
        for id in &ids {
            let r = store.get(*id).await.expect("reads").expect("kept");
            assert_eq!(r.status, Status::Delivered, "{id}");
        }
        assert_eq!(server.cli(&["HLEN", &format!("{base}lease")]).trim(), "0");
        let counts = store.refresh().await.expect("counts");
        assert_eq!((counts.ready, counts.inflight), (0, 0));
        assert_eq!(
            server.cli(&["XLEN", &q]).trim(),
            "0",
            "the done entries are trimmed"
        );
        let findings = store.check_consistency().await.expect("checks");
        assert!(findings.is_empty(), "{findings:#?}");
        store.close().await;
    }

    /// Outcomes acknowledge their stream entries without deleting them; the counts' refresh
    /// trims the stream below the oldest entry still needed. After it, the stream holds exactly
    /// the entries pending or not read yet, and the counts agree: a trim that kept the done
    /// entries would leave them in the stream, one that cut too far would lose a ready message.
    #[tokio::test]
    async fn the_refresh_trims_acknowledged_entries_and_keeps_the_live_ones() {
        let server = RedisServer::start().await;
        let q = "{layout:c}:q";
        let store = RedisStore::connect(options(&server, "trim", false))
            .await
            .expect("connects");
        let message =
            parse_message(&serde_json::json!({"touser": "o", "template_id": "T"})).expect("valid");
        let accept = |n: usize| {
            let items = (0..n)
                .map(|_| wxpush_pusher::store::AcceptItem {
                    message: message.clone(),
                    idempotency_key: None,
                    request_digest: None,
                })
                .collect();
            store.accept(items)
        };
        let xlen = || server.cli(&["XLEN", q]).trim().to_string();
        accept(3).await.expect("accepts");
        let leased = lease_all(&store, 3).await;
        assert_eq!(leased.len(), 3);
        let outcomes = leased
            .iter()
            .enumerate()
            .map(|(i, l)| (l.slot, delivered(l, 200 + i as i64)))
            .collect();
        for a in store.complete_many(outcomes).await {
            a.expect("completes");
        }
        accept(2).await.expect("accepts");
        let counts = store.refresh().await.expect("counts");
        assert_eq!((counts.ready, counts.inflight), (2, 0));
        assert_eq!(
            xlen(),
            "2",
            "the three done entries are trimmed, the two unread stay"
        );
        let next = lease_all(&store, 1).await;
        assert_eq!(next.len(), 1);
        let counts = store.refresh().await.expect("counts");
        assert_eq!((counts.ready, counts.inflight), (1, 1));
        assert_eq!(xlen(), "2", "a pending entry stays");
        store
            .complete(next[0].slot, delivered(&next[0], 300))
            .await
            .expect("completes");
        let last = lease_all(&store, 1).await;
        assert_eq!(last.len(), 1);
        store
            .complete(last[0].slot, delivered(&last[0], 301))
            .await
            .expect("completes");
        let counts = store.refresh().await.expect("counts");
        assert_eq!((counts.ready, counts.inflight), (0, 0));
        assert_eq!(xlen(), "0");
        let findings = store.check_consistency().await.expect("checks");
        assert!(findings.is_empty(), "{findings:#?}");
        store.close().await;
    }

    /// Without events (no `events.token`) a delivered message gets no events indexes; with
    /// them it gets both. The start is a mark beside the record, which its next lease and a
    /// read show, and which the outcome removes.
    #[tokio::test]
    async fn events_indexes_only_for_a_channel_with_events() {
        let server = RedisServer::start().await;
        for (consumer, events) in [("plain", false), ("events", true)] {
            let base = format!("{{layout:{consumer}}}:");
            let mut o = options(&server, consumer, events);
            o.channel = consumer.into();
            let store = RedisStore::connect(o).await.expect("connects");
            let message = parse_message(
                &serde_json::json!({"touser": format!("o-{consumer}"), "template_id": "T"}),
            )
            .expect("valid");
            let id = store
                .accept(vec![wxpush_pusher::store::AcceptItem {
                    message,
                    idempotency_key: None,
                    request_digest: None,
                }])
                .await
                .expect("accepts")[0]
                .id;
            let leased = lease_all(&store, 1).await;
            assert_eq!(leased.len(), 1);
            let at = Timestamp::now();
            store.start_attempt(&leased[0], at).await.expect("starts");
            let record = server.cli(&["GET", &format!("{base}m:{id}")]);
            assert!(
                !record.contains("first_attempt_at"),
                "the record is not written again: {record}"
            );
            let read = store.get(id).await.expect("reads").expect("kept");
            assert_eq!(
                (read.status, read.first_attempt_at),
                (Status::Sending, Some(at))
            );
            store
                .complete(leased[0].slot, delivered(&leased[0], 77))
                .await
                .expect("completes");
            let x = server.cli(&["EXISTS", &format!("{base}x:77")]);
            let a = server.cli(&["EXISTS", &format!("{base}a:o-{consumer}")]);
            let want = if events { "1" } else { "0" };
            assert_eq!((x.trim(), a.trim()), (want, want), "events: {events}");
            assert_eq!(server.cli(&["HLEN", &format!("{base}lease")]).trim(), "0");
            let findings = store.check_consistency().await.expect("checks");
            assert!(findings.is_empty(), "{findings:#?}");
            store.close().await;
        }
    }
}
