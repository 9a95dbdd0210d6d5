//! The in-process hub: runs live in this process's memory, in one
//! per-node engine (`hub::node`) with no other nodes to ask.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::node::{Alone, Node};
use super::{
    Cancelled, HubBackend, HubError, Published, Resume, RunId, RunMeta, RunSnapshot, RunStatus,
    Seq, Viewer,
};
use crate::agent::push;
use crate::agent::{AgentEvent, AgentStream};
use crate::config::RunsConfig;
use crate::metrics::Metrics;
use crate::wire::Format;

/// The in-memory [`HubBackend`].
#[derive(Clone)]
pub struct MemoryHub {
    node: Node,
}

impl MemoryHub {
    /// A hub with `config`'s retention and disconnect grace. Must be called
    /// inside a tokio runtime: it starts the sweeper task.
    pub fn new(config: &RunsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            node: Node::new(config, metrics, Arc::new(Alone)),
        }
    }
}

impl HubBackend for MemoryHub {
    fn start(&self, meta: RunMeta, events: AgentStream) -> BoxFuture<'_, Result<(), HubError>> {
        self.node.start(meta, events, None, None);
        futures::future::ready(Ok(())).boxed()
    }

    fn start_push(
        &self,
        meta: RunMeta,
        idle_timeout: Duration,
    ) -> BoxFuture<'_, Result<(), HubError>> {
        let (inbox, events) = push::channel(idle_timeout);
        self.node.start(meta, events, Some(inbox), None);
        futures::future::ready(Ok(())).boxed()
    }

    fn publish(
        &self,
        id: RunId,
        viewer: Viewer,
        given: Option<Seq>,
        events: Vec<AgentEvent>,
    ) -> BoxFuture<'_, Result<Published, HubError>> {
        async move {
            let run = self.node.lookup(&id, &viewer)?;
            run.publish(given, events).await
        }
        .boxed()
    }

    fn ended(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<RunStatus, HubError>> {
        async move {
            let run = self.node.lookup(&id, &viewer)?;
            Ok(run.ended().await)
        }
        .boxed()
    }

    fn subscribe(
        &self,
        id: RunId,
        after: Seq,
        format: Format,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Resume, HubError>> {
        let resume = self
            .node
            .lookup(&id, &viewer)
            .and_then(|run| self.node.subscribe(run, after, format));
        futures::future::ready(resume).boxed()
    }

    fn chat_run(
        &self,
        chat: String,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Option<RunId>, HubError>> {
        futures::future::ready(Ok(self.node.chat_run(chat, viewer))).boxed()
    }

    fn snapshot(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<RunSnapshot, HubError>> {
        let snapshot = self.node.lookup(&id, &viewer).map(|run| run.snapshot(true));
        futures::future::ready(snapshot).boxed()
    }

    fn list(
        &self,
        limit: usize,
        viewer: Viewer,
    ) -> BoxFuture<'_, Result<Vec<RunSnapshot>, HubError>> {
        futures::future::ready(Ok(self.node.list(limit, &viewer))).boxed()
    }

    fn cancel(&self, id: RunId, viewer: Viewer) -> BoxFuture<'_, Result<Cancelled, HubError>> {
        async move {
            let run = self.node.lookup(&id, &viewer)?;
            Ok(run.cancel().await)
        }
        .boxed()
    }

    fn running(&self) -> usize {
        self.node.running()
    }

    fn running_for(&self, owner: &Viewer) -> usize {
        self.node.running_for(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Chunk;
    use futures::StreamExt;

    fn id(n: usize) -> RunId {
        RunId::parse(&format!("run{n}")).unwrap()
    }

    /// A one-shot run whose client never subscribes is cancelled once the
    /// first-subscriber wait is over; one whose client came runs on.
    // Paused time: the idle check and this test's wait advance together,
    // however loaded the machine is.
    #[tokio::test(start_paused = true)]
    async fn a_one_shot_run_nobody_subscribes_to_is_cancelled() {
        let hub = MemoryHub::new(
            &RunsConfig {
                disconnect_grace_secs: 0,
                ..RunsConfig::default()
            },
            Metrics::new().unwrap(),
        );
        let forever = || {
            futures::stream::iter([crate::agent::AgentEvent::Token("a".into())])
                .chain(futures::stream::pending())
                .boxed()
        };
        let mut subscriptions = Vec::new();
        for n in [1, 2] {
            let meta = RunMeta {
                id: id(n),
                agent: "sim".into(),
                model: "sim".into(),
                prompt: String::new(),
                created_at: std::time::SystemTime::now(),
                chat: None,
                cancel_on_disconnect: true,
                owner: None,
            };
            assert!(hub.start(meta, forever()).await.is_ok());
        }
        if let Ok(Resume::Events(subscription)) =
            hub.subscribe(id(2), 0, Format::Sluice, None).await
        {
            subscriptions.push(subscription);
        }
        assert_eq!(subscriptions.len(), 1);
        tokio::time::sleep(crate::hub::node::FIRST_SUBSCRIBER_WAIT + Duration::from_millis(300))
            .await;
        let status = |n| {
            let hub = hub.clone();
            async move { hub.snapshot(id(n), None).await.map(|s| s.status).ok() }
        };
        assert_eq!(status(1).await, Some(RunStatus::Cancelled));
        assert_eq!(status(2).await, Some(RunStatus::Running));
        assert_eq!(hub.running(), 1);
    }

    #[tokio::test]
    async fn a_panicking_agent_ends_its_run_with_an_error_event() {
        let hub = MemoryHub::new(&RunsConfig::default(), Metrics::new().unwrap());
        let meta = RunMeta {
            id: id(1),
            agent: "broken".into(),
            model: "broken".into(),
            prompt: String::new(),
            created_at: std::time::SystemTime::now(),
            chat: None,
            cancel_on_disconnect: false,
            owner: None,
        };
        let events = futures::stream::iter([crate::agent::AgentEvent::Token("a".into())])
            .chain(futures::stream::poll_fn(
                |_| -> std::task::Poll<Option<_>> { panic!("agent bug") },
            ))
            .boxed();
        assert!(hub.start(meta, events).await.is_ok());
        let Ok(Resume::Events(subscription)) = hub.subscribe(id(1), 0, Format::Sluice, None).await
        else {
            panic!("no subscription");
        };
        let chunks: Vec<Chunk> =
            tokio::time::timeout(Duration::from_secs(5), subscription.collect())
                .await
                .unwrap_or_default();
        let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.bytes.to_vec()).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.contains("event: token"), "{text}");
        assert!(
            text.ends_with(
                "\"code\":\"agent_panicked\",\"message\":\"the agent failed unexpectedly\"}\n\n"
            ),
            "{text}"
        );
        assert_eq!(hub.running(), 0);
    }
}
