//! The store contract (`wxpush_pusher::store::contract`) against the Redis store on a real
//! `redis-server` with AOF on, plus the same suite on a 3-master Redis Cluster; and the embedded
//! store once more from outside the crate, so that both backends are seen passing one suite.

mod embedded {
    wxpush_pusher::store_contract!(wxpush_pusher::store::contract::Embedded::temp());
}

mod redis {
    use std::sync::OnceLock;

    use wxpush_tests::redis::RedisServer;

    /// One server for the whole suite (each check uses a key prefix of its own); it lives
    /// in a thread of its own so that every test's runtime can reach it.
    fn url() -> String {
        static URL: OnceLock<String> = OnceLock::new();
        URL.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().expect("runtime");
                let server = rt.block_on(RedisServer::start());
                server.reap_with_this_process();
                tx.send(server.url()).expect("send the url");
                // Keep the server for the life of the test process.
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("redis started")
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
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().expect("runtime");
                let cluster = rt.block_on(RedisCluster::start());
                cluster.reap_with_this_process();
                tx.send(cluster.url()).expect("send the url");
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("redis cluster started")
        })
        .clone()
    }

    wxpush_pusher::store_contract!(wxpush_pusher::store::contract::Redis::new(&url(), true));
}
