//! `GET /live`: the live channel as a WebSocket (see [`crate::live`] for what is sent, when, and
//! what a client that falls behind gets).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::docs::ErrorBody;
use super::{ApiError, AppState};
use crate::live::{Filter, Subscription};

/// The filter of a `?stream=<id>&stream=<id>` query.
fn filter(query: Option<&str>) -> Result<Filter, ApiError> {
    let mut streams = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "stream" => streams.push(
                Uuid::parse_str(&value)
                    .map_err(|_| ApiError::bad(format!("stream={value:?} is not a stream id")))?,
            ),
            other => return Err(ApiError::bad(format!("unknown parameter {other:?}"))),
        }
    }
    Ok(Filter::streams(streams))
}

/// The live channel: one JSON text message per committed result (`type: result`, with its
/// reading when it brought a new one), failed run (`failure`), stream change (`stream`) and
/// worker connect or disconnect (`worker`), in commit order. `?stream=<id>` (repeatable) keeps
/// only those streams. Each client has a queue of 1024 messages; what does not fit is dropped
/// for that client, which then gets `{"type": "lagged", "dropped": n}` (page the list API to
/// catch up). Messages never arrive before their commit.
#[utoipa::path(
    get, path = "/live", operation_id = "live", tag = "live",
    params(("stream" = Option<Vec<Uuid>>, Query, description = "Only these streams (repeatable)")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "A malformed filter, or not a WebSocket request", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    )
)]
pub(super) async fn live(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let filter = filter(query.as_deref())?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad(format!(
            "GET /live is a WebSocket: {}",
            axum::response::IntoResponse::into_response(rejection).status()
        ))
    })?;
    let subscription = state.live.subscribe(filter);
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| client(socket, subscription)))
}

/// Messages written to a client's socket before one flush.
const BATCH: usize = 256;

/// What a client may send in one read: it only closes or pings, so a small buffer (the
/// default, 128 KiB, is zeroed on every read attempt).
const READ_BUFFER: usize = 4 * 1024;

/// One client: forward its messages until it leaves or the server stops. What is queued when a
/// message arrives goes out with it, up to [`BATCH`] messages in one flush (one write instead of
/// one per message: a client that follows every stream gets thousands a second). Its reads run
/// apart, woken only when it sends something, so that sending does not poll the socket for
/// input once per message.
async fn client(socket: WebSocket, mut subscription: Subscription) {
    metrics::gauge!("ds_live_clients").increment(1);
    let (mut sink, mut incoming) = socket.split();
    let gone = CancellationToken::new();
    let reader = tokio::spawn({
        let gone = gone.clone();
        async move {
            // Clients only listen; pings are answered by the socket itself.
            while let Some(Ok(message)) = incoming.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
            gone.cancel();
        }
    });
    loop {
        let text = tokio::select! {
            message = subscription.next() => match message {
                Some(text) => text,
                None => break,
            },
            () = gone.cancelled() => break,
        };
        if sink.feed(Message::Text(text)).await.is_err() {
            break;
        }
        let mut fed = 1;
        while fed < BATCH {
            let Some(text) = subscription.try_next() else {
                break;
            };
            if sink.feed(Message::Text(text)).await.is_err() {
                break;
            }
            fed += 1;
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    reader.abort();
    metrics::gauge!("ds_live_clients").decrement(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_repeatable_stream_ids() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let both = filter(Some(&format!("stream={a}&stream={b}"))).unwrap();
        assert!(both.wants(Some(a)) && both.wants(Some(b)));
        assert!(!both.wants(Some(Uuid::now_v7())));
        assert_eq!(filter(None).unwrap(), Filter::default());
        assert!(filter(Some("stream=nope")).is_err());
        assert!(filter(Some("other=1")).is_err());
    }
}
