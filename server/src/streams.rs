//! Counting the response streams that are open, so that a stream whose client went away can be
//! seen to stop (and tests can wait for it without sleeping).

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::watch;

/// How many response streams are open right now. Cloning gives another handle to the same count.
#[derive(Debug, Clone)]
pub struct OpenStreams(Arc<watch::Sender<usize>>);

impl Default for OpenStreams {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl OpenStreams {
    /// Counts `stream` as open until it is dropped: when it ends, or when the client goes away
    /// and the server drops the response.
    pub fn track<S: Stream + Send + 'static>(
        &self,
        stream: S,
    ) -> impl Stream<Item = S::Item> + Send {
        self.0.send_modify(|open| *open += 1);
        let guard = Guard(self.0.clone());
        stream.map(move |item| {
            let _ = &guard;
            item
        })
    }

    /// How many are open now.
    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Watches the count.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.0.subscribe()
    }
}

struct Guard(Arc<watch::Sender<usize>>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_counts_until_dropped() {
        let open = OpenStreams::default();
        let stream = open.track(futures::stream::pending::<()>());
        assert_eq!(*open.watch().borrow(), 1);
        drop(stream);
        assert_eq!(*open.watch().borrow(), 0);
    }
}
