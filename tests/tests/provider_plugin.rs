//! A provider of the tests' own, plugged into the real engine: it proves that a new provider
//! needs only a module implementing `Sender` (token scope, request building, errcode
//! classification), and that the engine uses nothing else of it. In the product, the one other
//! line is its arm in `providers::sender_for`, which the `provider` enum variant selects.

mod wechat_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use wechat_support::{config, sandbox, sandbox_config, template};
use wxpush_pusher::metrics::Metrics;
use wxpush_pusher::policy::Retry;
use wxpush_pusher::providers::errcode::classify_send;
use wxpush_pusher::send::{
    ErrorKind, MessageKind, Outgoing, SendAction, SendError, SendRequest, Sender, TokenScope,
};
use wxpush_pusher::wechat::{SendOutcome, WeChatSender};

/// A provider that sends everything as a template message, with the `touser` it is given
/// rewritten, and treats 43004 ("not a follower") as worth a retry: two choices the built-in
/// providers do not make, so the test can see that the engine used this module's.
#[derive(Debug)]
struct Rewriting {
    to: &'static str,
    built: AtomicUsize,
    classified: AtomicUsize,
}

impl Sender for Rewriting {
    fn name(&self) -> &'static str {
        "testRewriting"
    }

    fn token_scope(&self) -> TokenScope {
        TokenScope::WeChatApp
    }

    fn build(&self, request: SendRequest<'_>) -> Result<Outgoing, SendError> {
        self.built.fetch_add(1, Ordering::SeqCst);
        let mut body: serde_json::Value =
            serde_json::from_str(request.body.get()).map_err(|e| SendError {
                kind: ErrorKind::Body,
                errcode: None,
                message: e.to_string(),
            })?;
        body["touser"] = self.to.into();
        Ok(Outgoing {
            path: MessageKind::Template.path(),
            body: Bytes::from(serde_json::to_vec(&body).map_err(|e| SendError {
                kind: ErrorKind::Body,
                errcode: None,
                message: e.to_string(),
            })?),
        })
    }

    fn classify(&self, errcode: i64, now: SystemTime, retry: &Retry) -> SendAction {
        self.classified.fetch_add(1, Ordering::SeqCst);
        match errcode {
            43004 => SendAction::Retry { not_before: None },
            other => classify_send(other, now, retry),
        }
    }
}

fn rewriting(to: &'static str) -> Arc<Rewriting> {
    Arc::new(Rewriting {
        to,
        built: AtomicUsize::new(0),
        classified: AtomicUsize::new(0),
    })
}

#[tokio::test]
async fn a_provider_of_the_tests_plugs_into_the_engine() {
    let mut sb_config = sandbox_config();
    sb_config.users = Some(["o-rewritten", "nf1"].map(String::from).into());
    sb_config.non_followers = ["nf1"].map(String::from).into();
    let sb = sandbox(sb_config).await;
    let pusher_config = config(&sb.base_url(), "");
    let engine = |provider: Arc<Rewriting>| {
        WeChatSender::with_provider(
            &pusher_config,
            Arc::new(Metrics::new("t")),
            provider as Arc<dyn Sender>,
        )
        .expect("the engine builds with any provider")
    };

    // The body names a user the sandbox does not know; the provider's rewrite makes it
    // deliverable, and its path sends a `subscribe` message as a template one.
    let provider = rewriting("o-rewritten");
    let body = serde_json::value::to_raw_value(&template("o-unknown", "plug-1")).expect("json");
    let request = SendRequest {
        kind: MessageKind::Subscribe,
        body: &body,
    };
    let outcome = engine(Arc::clone(&provider)).send(request).await;
    assert!(
        matches!(outcome, SendOutcome::Delivered { .. }),
        "{outcome:?}"
    );
    assert_eq!(sb.stats().delivered_unique, 1);
    assert_eq!(provider.built.load(Ordering::SeqCst), 1);
    assert_eq!(provider.classified.load(Ordering::SeqCst), 1);

    // 43004 is permanent for the built-in providers; this one says retry, and the engine obeys.
    let body = serde_json::value::to_raw_value(&template("nf1", "plug-2")).expect("json");
    let request = SendRequest {
        kind: MessageKind::Template,
        body: &body,
    };
    let built_in = WeChatSender::new(&pusher_config, Arc::new(Metrics::new("t")))
        .expect("the official account engine builds")
        .send(request)
        .await;
    assert!(
        matches!(built_in, SendOutcome::Permanent { .. }),
        "{built_in:?}"
    );
    let outcome = engine(rewriting("nf1")).send(request).await;
    assert!(matches!(outcome, SendOutcome::Retry { .. }), "{outcome:?}");
}
