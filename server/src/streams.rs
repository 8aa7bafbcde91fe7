//! Counting what is running: the response streams that are open, so that a stream whose client
//! went away can be seen to stop, and the store's writes on tasks of their own, so that one whose
//! caller went away can be seen to end (and tests can wait for either without sleeping).

use std::{future::Future, sync::Arc};

use futures::{Stream, StreamExt};
use tokio::sync::watch;

/// How many of something run right now. Cloning gives another handle to the same count.
#[derive(Debug, Clone)]
pub struct Count(Arc<watch::Sender<usize>>);

/// How many response streams are open right now.
pub type OpenStreams = Count;

impl Default for Count {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl Count {
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

    /// Counts `work` from now until it ends or is dropped.
    pub fn track_future<T>(&self, work: impl Future<Output = T>) -> impl Future<Output = T> {
        self.0.send_modify(|running| *running += 1);
        let guard = Guard(self.0.clone());
        async move {
            let _guard = guard;
            work.await
        }
    }

    /// How many are running now.
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

    #[tokio::test]
    async fn a_future_counts_until_it_ends() {
        let running = Count::default();
        let work = running.track_future(async { 7 });
        assert_eq!(running.count(), 1);
        assert_eq!(work.await, 7);
        assert_eq!(running.count(), 0);
    }
}
