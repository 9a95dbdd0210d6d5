//! The node's writer: every run's writes to Redis, batched.

use redis::aio::ConnectionManager;

use super::conn::{bounded, unavailable, REQUEST_TIMEOUT};
use super::Inner;
use crate::hub::HubError;

/// Commands of one run for the node's writer, and where to say how it went.
pub(super) struct Write {
    commands: Vec<redis::Cmd>,
    done: tokio::sync::oneshot::Sender<Result<(), HubError>>,
}

impl Inner {
    /// Sends `commands` with the node's next batch; waits until Redis has
    /// answered, within the request timeout.
    pub(super) async fn submit(&self, commands: Vec<redis::Cmd>) -> Result<(), HubError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.writer
            .send(Write { commands, done })
            .map_err(|_| unavailable("the node's writer has stopped"))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable("the node's writer has stopped")),
            Err(_) => Err(unavailable("no answer in time")),
        }
    }
}

/// The node's writer: whatever runs have submitted while the previous batch
/// was on its way goes to Redis as one pipeline, one round trip for many
/// runs' events. Each submitter then hears whether the batch went through;
/// on an error it looks at what Redis has and tries again.
pub(super) async fn write(
    mut conn: ConnectionManager,
    mut writes: tokio::sync::mpsc::UnboundedReceiver<Write>,
) {
    const MAX_BATCH: usize = 4_096;
    while let Some(first) = writes.recv().await {
        let mut batch = vec![first];
        let mut commands = batch[0].commands.len();
        while commands < MAX_BATCH {
            match writes.try_recv() {
                Ok(write) => {
                    commands += write.commands.len();
                    batch.push(write);
                }
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        let mut waiting = Vec::with_capacity(batch.len());
        for write in batch {
            for command in write.commands {
                pipe.add_command(command).ignore();
            }
            waiting.push(write.done);
        }
        let result = bounded(pipe.query_async::<()>(&mut conn)).await;
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}
