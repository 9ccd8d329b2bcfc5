//! SGLang's bootstrap rooms: the prefill and decode legs of one request meet in a room keyed by
//! the prefill's (bootstrap host, bootstrap port, room id). Share one [`Rendezvous`] (clone it)
//! between the SGLang mocks that must be able to pair.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::stats::lock;

/// Where a prefill and a decode leg meet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoomKey {
    pub host: String,
    pub port: u16,
    pub room: u64,
}

/// The shared meeting place of SGLang prefill and decode mocks.
#[derive(Clone)]
pub struct Rendezvous {
    inner: Arc<Inner>,
}

struct Inner {
    rooms: Mutex<HashMap<RoomKey, Room>>,
    /// Bumped on every change; waiters re-check their condition.
    changed: watch::Sender<u64>,
}

impl Default for Rendezvous {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                rooms: Mutex::default(),
                changed: watch::channel(0).0,
            }),
        }
    }
}

/// The state of one room. A room exists while at least one leg is in it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Room {
    pub prefill: bool,
    pub decode: bool,
    pub transferred: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leg {
    Prefill,
    Decode,
}

impl Rendezvous {
    /// Rooms with a leg still in them (registered but not completed): 0 once every pair finished,
    /// timed out or was cancelled.
    pub fn pending(&self) -> usize {
        lock(&self.inner.rooms).len()
    }

    /// The rooms currently pending.
    pub fn pending_rooms(&self) -> Vec<RoomKey> {
        lock(&self.inner.rooms).keys().cloned().collect()
    }

    /// Puts `leg` into every room of `keys`, atomically. Fails with the first key where that leg
    /// is already present (a reused room).
    pub(crate) fn enter(&self, keys: Vec<RoomKey>, leg: Leg) -> Result<LegGuard, RoomKey> {
        {
            let mut rooms = lock(&self.inner.rooms);
            for (i, k) in keys.iter().enumerate() {
                let room = rooms.get(k).copied().unwrap_or_default();
                let taken = match leg {
                    Leg::Prefill => room.prefill || room.transferred,
                    Leg::Decode => room.decode,
                };
                if taken || keys[..i].contains(k) {
                    return Err(k.clone());
                }
            }
            for k in &keys {
                let room = rooms.entry(k.clone()).or_default();
                match leg {
                    Leg::Prefill => room.prefill = true,
                    Leg::Decode => room.decode = true,
                }
            }
        }
        self.notify();
        Ok(LegGuard {
            rdv: self.clone(),
            keys,
            leg,
        })
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// One leg's presence in its rooms; leaving (drop) removes rooms no leg is in any more.
pub(crate) struct LegGuard {
    rdv: Rendezvous,
    keys: Vec<RoomKey>,
    leg: Leg,
}

impl LegGuard {
    /// Waits until every room satisfies `pred`. Cancellation-safe (drop the future).
    pub(crate) async fn wait(&self, pred: impl Fn(&Room) -> bool) {
        let mut rx = self.rdv.inner.changed.subscribe();
        loop {
            {
                let rooms = lock(&self.rdv.inner.rooms);
                if self.keys.iter().all(|k| rooms.get(k).is_some_and(&pred)) {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                // Unreachable: the sender lives as long as `self.rdv`.
                std::future::pending::<()>().await;
            }
        }
    }

    pub(crate) fn mark_transferred(&self) {
        {
            let mut rooms = lock(&self.rdv.inner.rooms);
            for k in &self.keys {
                if let Some(room) = rooms.get_mut(k) {
                    room.transferred = true;
                }
            }
        }
        self.rdv.notify();
    }
}

impl Drop for LegGuard {
    fn drop(&mut self) {
        {
            let mut rooms = lock(&self.rdv.inner.rooms);
            for k in &self.keys {
                if let Some(room) = rooms.get_mut(k) {
                    match self.leg {
                        Leg::Prefill => room.prefill = false,
                        Leg::Decode => room.decode = false,
                    }
                    if !room.prefill && !room.decode {
                        rooms.remove(k);
                    }
                }
            }
        }
        self.rdv.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(room: u64) -> RoomKey {
        RoomKey {
            host: "127.0.0.1".into(),
            port: 8998,
            room,
        }
    }

    #[tokio::test]
    async fn legs_meet_and_leave_no_room_behind() {
        let rdv = Rendezvous::default();
        let decode = rdv.enter(vec![key(1)], Leg::Decode).unwrap();
        assert!(rdv.enter(vec![key(1)], Leg::Decode).is_err());
        let prefill = rdv.enter(vec![key(1)], Leg::Prefill).unwrap();
        prefill.wait(|r| r.decode).await;
        prefill.mark_transferred();
        drop(prefill);
        assert_eq!(rdv.pending(), 1);
        decode.wait(|r| r.transferred).await;
        drop(decode);
        assert_eq!(rdv.pending(), 0);
    }
}
