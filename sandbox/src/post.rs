//! POSTing one event to a receiver's callback URL the way WeChat and WeCom do: XML, retried
//! after a timeout, a transport error or a non-2xx answer, and given up on shutdown.

use tokio_util::sync::CancellationToken;
use url::Url;

/// How the POSTs of one event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    /// The receiver answered 2xx.
    Acknowledged {
        /// POSTs made, the acknowledged one included.
        attempts: u32,
    },
    /// Every POST failed.
    Refused {
        /// POSTs made.
        attempts: u32,
    },
    /// The sandbox shut down before an answer.
    ShutDown {
        /// POSTs started.
        attempts: u32,
    },
}

/// POSTs `body` to `url` as `text/xml` once and up to `retries` more times, until a 2xx
/// answer or `shutdown`. `on_attempt` runs before each POST (the stats count attempts).
/// The client's own timeout bounds each POST.
pub async fn post_event(
    client: &reqwest::Client,
    url: &Url,
    body: &str,
    retries: u32,
    shutdown: &CancellationToken,
    mut on_attempt: impl FnMut(),
) -> Posted {
    let mut attempts = 0;
    for _ in 0..=retries {
        attempts += 1;
        on_attempt();
        let req = client
            .post(url.clone())
            .header("content-type", "text/xml")
            .body(body.to_string())
            .send();
        let ok = tokio::select! {
            () = shutdown.cancelled() => return Posted::ShutDown { attempts },
            r = req => r.is_ok_and(|r| r.status().is_success()),
        };
        if ok {
            return Posted::Acknowledged { attempts };
        }
        tracing::debug!(attempt = attempts, %url, "event not acknowledged");
    }
    Posted::Refused { attempts }
}
