//! The stream of container exits from containerd's event service.
//!
//! One subscription per runtime, filtered to the namespace's `/tasks/exit` topic, kept alive
//! across containerd restarts; each (re)subscription is announced with
//! [`Event::Reconnected`] so the engine compares its picture with a fresh listing.

use std::time::Duration;

use containerd_client::services::v1 as api;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connection::{Backoff, Conn, StatusKind, at, classify, epoch_seconds};
use crate::runtime::{Event, RuntimeError};

const EXIT_TOPIC: &str = "/tasks/exit";
/// Published by the runtime itself to learn when its event subscription is live (see
/// [`watch_events`]).
const PING_TOPIC: &str = "/ecsd/ping";

/// Keeps one subscription to the namespace's exit events alive for as long as the receiver
/// and the runtime live, resubscribing with backoff when it breaks.
///
/// containerd (grpc-go) sends a stream's response headers only with its first message, so a
/// subscription is invisible until an event arrives. The watcher therefore publishes a ping on
/// [`PING_TOPIC`] (which it also subscribes to) until the first message arrives: from then on
/// no exit can be missed, which it announces with [`Event::Reconnected`], on the first
/// subscription as on every later one.
pub(crate) async fn watch_events(conn: Conn, tx: mpsc::Sender<Event>, shutdown: CancellationToken) {
    let ns = conn.namespace().to_owned();
    let filters = vec![
        format!("namespace=={},topic=={}", quote_filter(&ns), quote_filter(EXIT_TOPIC)),
        format!("namespace=={},topic=={}", quote_filter(&ns), quote_filter(PING_TOPIC)),
    ];
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let subscribed = tokio::select! {
            r = subscribe_live(&conn, &filters) => r,
            () = shutdown.cancelled() => return,
        };
        match subscribed {
            Ok(mut stream) => {
                backoff.reset();
                info!(namespace = %ns, "containerd event subscription is live");
                if tx.send(Event::Reconnected).await.is_err() {
                    return;
                }
                loop {
                    let next = tokio::select! {
                        m = stream.message() => m,
                        () = shutdown.cancelled() => return,
                        () = tx.closed() => return,
                    };
                    match next {
                        Ok(Some(envelope)) => {
                            if let Some(event) = exit_event(&envelope)
                                && tx.send(event).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => {
                            warn!(namespace = %ns, "containerd ended the event stream; resubscribing");
                            break;
                        }
                        Err(status) => {
                            warn!(namespace = %ns, code = ?status.code(), error = %status.message(),
                                  "containerd event stream broke; resubscribing");
                            break;
                        }
                    }
                }
            }
            Err(e) => debug!(namespace = %ns, error = %e, "cannot subscribe to containerd events yet"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
        }
    }
}

/// Subscribes and returns the stream once it is known to be registered (see [`watch_events`]).
async fn subscribe_live(
    conn: &Conn,
    filters: &[String],
) -> Result<tonic::Streaming<containerd_client::types::Envelope>, RuntimeError> {
    const PING_EVERY: Duration = Duration::from_millis(250);
    const GIVE_UP: Duration = Duration::from_secs(10);
    let ns = conn.namespace().to_owned();
    let sub_at = at("subscribe to events", "namespace", &ns);
    let mut client = conn.events();
    let req = conn.request(api::SubscribeRequest { filters: filters.to_vec() });
    let subscribe = client.subscribe(req);
    tokio::pin!(subscribe);
    let mut ping = tokio::time::interval(PING_EVERY);
    let deadline = tokio::time::sleep(GIVE_UP);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = &mut subscribe => return r.map(|resp| resp.into_inner()).map_err(|s| conn.error(s, sub_at)),
            _ = ping.tick() => {
                let event = prost_types::Any { type_url: "google.protobuf.Empty".into(), value: Vec::new() };
                let req = conn.request(api::PublishRequest { topic: PING_TOPIC.into(), event: Some(event) });
                if let Err(s) = conn.events().publish(req).await
                    && classify(&s) == StatusKind::Unavailable
                {
                    return Err(conn.error(s, sub_at));
                }
            }
            () = &mut deadline => {
                return Err(RuntimeError::Timeout { operation: "subscribe to events", after: GIVE_UP });
            }
        }
    }
}

/// The exit of a container's main process in `envelope`, if that is what it carries.
fn exit_event(envelope: &containerd_client::types::Envelope) -> Option<Event> {
    if envelope.topic != EXIT_TOPIC {
        return None;
    }
    let any = envelope.event.as_ref()?;
    let exit = match containerd_client::events::TaskExit::decode(any.value.as_slice()) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "undecodable task exit event");
            return None;
        }
    };
    // Exec'd processes (health checks) exit with their own ids.
    if exit.id != exit.container_id {
        return None;
    }
    Some(Event::Exit {
        id: exit.container_id,
        pid: exit.pid,
        code: exit.exit_status as i32,
        at: epoch_seconds(exit.exited_at.as_ref()),
    })
}

/// A containerd filter string literal.
fn quote_filter(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_main_process_exits_become_events() {
        let envelope = |id: &str| containerd_client::types::Envelope {
            timestamp: None,
            namespace: "ecs".into(),
            topic: EXIT_TOPIC.into(),
            event: Some(prost_types::Any {
                type_url: "containerd.events.TaskExit".into(),
                value: containerd_client::events::TaskExit {
                    container_id: "c1".into(),
                    id: id.into(),
                    pid: 42,
                    exit_status: 3,
                    exited_at: Some(prost_types::Timestamp { seconds: 10, nanos: 0 }),
                }
                .encode_to_vec(),
            }),
        };
        assert_eq!(
            exit_event(&envelope("c1")),
            Some(Event::Exit { id: "c1".into(), pid: 42, code: 3, at: 10.0 })
        );
        assert_eq!(exit_event(&envelope("exec-1")), None);
        let mut ping = envelope("c1");
        ping.topic = PING_TOPIC.into();
        assert_eq!(exit_event(&ping), None);
    }

    #[test]
    fn filters_quote_values() {
        assert_eq!(quote_filter("ecs"), "\"ecs\"");
        assert_eq!(quote_filter("a\"b\\"), "\"a\\\"b\\\\\"");
    }
}
