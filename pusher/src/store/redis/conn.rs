//! The connection to Redis: one client for a single server or a Redis Cluster, reconnecting
//! on its own with backoff, and URLs that never show their password.
//!
//! A single server goes through [`redis::aio::ConnectionManager`] (one multiplexed
//! connection, re-established in the background after a failure; requests fail fast while it
//! is down, so callers answer 503 rather than hang). A cluster goes through the cluster client
//! (one multiplexed connection per master, slots refreshed on `MOVED`). Every key of a channel
//! carries the same hash tag, so a channel's scripts always run on one node.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// How long one request may take before it counts as failed.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to a single server or to a cluster.
#[derive(Clone)]
pub enum Conn {
    /// One server (or a primary behind a proxy).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether this is one server, where a script may reach keys it did not declare (a
    /// cluster checks the declared keys of a slot on the move).
    pub fn is_single(&self) -> bool {
        matches!(self, Self::Single(_))
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Conn::Single"),
            Self::Cluster(_) => f.write_str("Conn::Cluster"),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How long an operation is retried while a Redis Cluster moves its slot.
pub(crate) const MIGRATION_RETRY: Duration = Duration::from_secs(10);

/// Whether `e` is a Redis Cluster redirect or a "wait" (`MOVED`, `ASK`, `TRYAGAIN`,
/// `CLUSTERDOWN`): nothing of the operation ran, and it can be sent again whole.
pub(crate) fn is_redirect(e: &redis::RedisError) -> bool {
    e.is_cluster_error()
}

/// Runs `op` until it answers something other than a cluster redirect, for at most
/// [`MIGRATION_RETRY`], with a short growing pause. Every script declares all its keys, so a
/// redirect means nothing ran: the whole operation is sent again (the cluster client has by
/// then learnt the slot's new owner from the `MOVED`).
pub(crate) async fn retrying<T, F, Fut>(mut op: F) -> Result<T, redis::RedisError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
{
    let deadline = tokio::time::Instant::now() + MIGRATION_RETRY;
    let mut pause = Duration::from_millis(5);
    loop {
        match op().await {
            Err(e) if is_redirect(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(error = %clean(&e), "redis slot moving; the operation is retried whole");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

/// Checks that `url` reads the same to every parser: a password holding an unencoded reserved
/// character (`@`, `#`, `?`, `/`) would otherwise end the user info early, and part of the
/// password would be taken for the host, path, query or fragment (and shown in logs). The error
/// never holds the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    const HOW: &str = "percent-encode reserved characters in the user and password: @ as %40, \
                       # as %23, ? as %3F, / as %2F, % as %25 (for example with \
                       `python3 -c 'import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], safe=\"\"))' PASSWORD`)";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("queue.redis.url must start with redis:// or rediss://".into());
    };
    if !matches!(scheme, "redis" | "rediss") {
        return Err("queue.redis.url must start with redis:// or rediss://".into());
    }
    // The authority ends at the first '/', '?' or '#'; an '@' after that point, or two in
    // it, means the user info held one of them unencoded.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.matches('@').count() > 1 || tail.contains('@') {
        return Err(format!(
            "queue.redis.url: the user or password holds an unencoded reserved character; {HOW}"
        ));
    }
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && has_bad_escape(userinfo)
    {
        return Err(format!(
            "queue.redis.url: the user or password holds a '%' that does not start an escape; {HOW}"
        ));
    }
    url::Url::parse(url)
        .map(|_| ())
        .map_err(|e| format!("queue.redis.url is not a valid URL ({e}); {HOW}"))
}

fn has_bad_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// `url` with its password replaced, for logs and errors: built from the parsed URL (scheme,
/// user, host, port, database), never from the text around the password. A URL that does not
/// pass [`check_url`] is not shown at all.
pub fn redact(url: &str) -> String {
    let parsed = check_url(url).ok().and_then(|()| url::Url::parse(url).ok());
    let Some(u) = parsed else {
        let scheme: String = url.chars().take_while(char::is_ascii_alphabetic).collect();
        return format!("{scheme}://… (URL hidden: not well-formed)");
    };
    let mut shown = format!("{}://", u.scheme());
    if !u.username().is_empty() {
        shown.push_str(u.username());
    }
    if u.password().is_some() {
        shown.push_str(":****");
    }
    if !u.username().is_empty() || u.password().is_some() {
        shown.push('@');
    }
    shown.push_str(u.host_str().unwrap_or_default());
    if let Some(p) = u.port() {
        shown.push_str(&format!(":{p}"));
    }
    shown.push_str(u.path());
    shown
}

/// The node URLs of `url`: several may be given separated by commas (cluster seeds).
pub fn nodes(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Connects to `url` (a cluster when `cluster` is set or several nodes are given). Errors name
/// the URL without its password.
pub async fn connect(url: &str, cluster: bool) -> Result<Conn, String> {
    let nodes = nodes(url);
    let shown = nodes
        .iter()
        .map(|n| redact(n))
        .collect::<Vec<_>>()
        .join(",");
    let Some(first) = nodes.first() else {
        return Err("queue.redis.url is empty".into());
    };
    for n in &nodes {
        check_url(n)?;
    }
    let fail = |e: redis::RedisError| format!("cannot connect to Redis at {shown}: {}", clean(&e));
    if cluster || nodes.len() > 1 {
        let client = redis::cluster::ClusterClient::builder(nodes.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(2)
            .build()
            .map_err(fail)?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| format!("cannot connect to Redis at {shown}: timed out"))?
            .map_err(fail)?;
        Ok(Conn::Cluster(conn))
    } else {
        let client = redis::Client::open(first.as_str()).map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| format!("cannot connect to Redis at {shown}: timed out"))?
        .map_err(fail)?;
        Ok(Conn::Single(conn))
    }
}

/// A Redis error's text, which never holds the URL's password (the client does not echo it)
/// but may be long: the first line only.
pub(crate) fn clean(e: &redis::RedisError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:s3cret@host:6379/0"),
            "redis://user:****@host:6379/0"
        );
        assert_eq!(redact("rediss://h:1"), "rediss://h:1");
        assert!(!redact("s3cret@@::").contains("s3cret"));
        assert_eq!(redact("redis://:pw@h:1/2"), "redis://:****@h:1/2");
    }

    #[test]
    fn unencoded_reserved_characters_in_the_password_are_refused_and_never_shown() {
        for url in [
            "redis://:p@ss#word@host:6379",
            "redis://:p@ss?word@host:6379",
            "redis://:p@ss/word@host:6379",
            "redis://user:a@b@host:6379",
            "redis://:pass#word@host:6379",
            "redis://:50%off@host:6379",
        ] {
            let err = check_url(url).expect_err(url);
            assert!(err.contains("%40") && err.contains("%23"), "{url}: {err}");
            for part in ["ss", "word", "off"] {
                assert!(!err.contains(&format!("{part}@")), "{url}: {err}");
            }
            let shown = redact(url);
            assert!(
                !shown.contains("word") && !shown.contains("ss") && !shown.contains("off"),
                "{url} shown as {shown}"
            );
        }
        check_url("redis://:p%40ss%23word@host:6379/0").expect("encoded is fine");
        assert_eq!(
            redact("redis://:p%40ss%23word@host:6379/0"),
            "redis://:****@host:6379/0"
        );
        assert_eq!(
            nodes("redis://a:1, redis://b:2"),
            vec!["redis://a:1", "redis://b:2"]
        );
    }
}
