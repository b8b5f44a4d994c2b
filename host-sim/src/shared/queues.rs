//! Shared queues: registered by (vm_id, name), resolved by any VM, enqueued by anyone, and
//! dequeued by whoever holds the token. The registering VM instance is told a queue became
//! ready through its inbox, which its event loop drains (Envoy posts to the worker's
//! dispatcher; we keep that step explicit so nothing runs behind the caller's back).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::types::Status;

/// Where "queue ready" notifications for one VM instance land: (root context id, token).
#[derive(Debug, Default)]
pub struct QueueInbox {
    ready: Mutex<Vec<(u32, u32)>>,
    /// Wakes the owning worker's event loop (an enqueue may come from any thread).
    arrived: tokio::sync::Notify,
}

impl QueueInbox {
    pub(crate) fn push(&self, root_context: u32, token: u32) {
        lock(&self.ready).push((root_context, token));
        self.arrived.notify_one();
    }

    /// Resolves once something was pushed since the last wait (or is waiting already).
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }

    pub(crate) fn drain(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut *lock(&self.ready))
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.ready).is_empty()
    }
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    owner_root: u32,
    owner: Arc<QueueInbox>,
}

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<(String, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next_token: u32,
}

#[derive(Debug, Default)]
pub struct SharedQueues {
    inner: Mutex<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedQueues {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or re-finds) the queue. The last registrant receives the notifications: cpp-host
    /// `SharedQueue::registerQueue` keeps the token and items and overwrites the subscriber.
    pub(crate) fn register(
        &self,
        vm_id: &str,
        name: &[u8],
        owner_root: u32,
        owner: &Arc<QueueInbox>,
    ) -> u32 {
        let mut inner = lock(&self.inner);
        let key = (vm_id.to_string(), name.to_vec());
        if let Some(token) = inner.by_name.get(&key).copied() {
            if let Some(queue) = inner.queues.get_mut(&token) {
                queue.owner_root = owner_root;
                queue.owner = owner.clone();
            }
            return token;
        }
        inner.next_token = inner.next_token.checked_add(1).unwrap_or(1);
        let token = inner.next_token;
        inner.by_name.insert(key, token);
        inner.queues.insert(
            token,
            Queue {
                items: VecDeque::new(),
                owner_root,
                owner: owner.clone(),
            },
        );
        token
    }

    pub(crate) fn resolve(&self, vm_id: &str, name: &[u8]) -> Result<u32, Status> {
        lock(&self.inner)
            .by_name
            .get(&(vm_id.to_string(), name.to_vec()))
            .copied()
            .ok_or(Status::NotFound)
    }

    pub(crate) fn enqueue(&self, token: u32, data: &[u8]) -> Result<(), Status> {
        let mut inner = lock(&self.inner);
        let queue = inner.queues.get_mut(&token).ok_or(Status::NotFound)?;
        queue.items.push_back(data.to_vec());
        queue.owner.push(queue.owner_root, token);
        Ok(())
    }

    pub(crate) fn dequeue(&self, token: u32) -> Result<Vec<u8>, Status> {
        let mut inner = lock(&self.inner);
        let queue = inner.queues.get_mut(&token).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }

    /// Number of items waiting in a queue (for observers and tests).
    pub fn len(&self, token: u32) -> Option<usize> {
        lock(&self.inner).queues.get(&token).map(|q| q.items.len())
    }
}
