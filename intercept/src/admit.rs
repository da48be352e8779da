//! Who gets an intercepted connection: at most `max_connections` at once in all, and at most
//! `max_per_client` of one client address (IPv6 hosts sharing a /64 count apart), so that one
//! host holding
//! thousands of idle connections (slowloris) or flooding the listener with hellos cannot take
//! every slot from the others. A connection beyond either is reset at once and recorded in
//! its flow. Control's link listener bounds its peers with the same [`Admission`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The engine holds `max_connections`.
    Full,
    /// Its client holds `max_per_client`.
    Client,
}

impl Refusal {
    /// The reason written into the flow's record.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "interception engine at its connection cap: reset",
            Refusal::Client => "client at its intercepted-connection limit: reset",
        }
    }
}

/// The connection slots.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, u32>>,
    max_per_client: u32,
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    owner: Arc<Admission>,
    client: IpAddr,
}

impl Admission {
    /// Slots for `max` connections, at most `per_client` of one client (0: an eighth of
    /// `max`, at least 16).
    pub fn new(max: usize, per_client: usize) -> Arc<Self> {
        let max = max.max(1);
        let per_client = if per_client == 0 { (max / 8).max(16) } else { per_client };
        Arc::new(Admission {
            permits: Arc::new(Semaphore::new(max)),
            per_client: Mutex::default(),
            max_per_client: u32::try_from(per_client).unwrap_or(u32::MAX),
        })
    }

    /// A slot for a connection from `peer`, or why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let client = peer;
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| Refusal::Full)?;
        let mut counts = self.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(client).or_insert(0);
        if *n >= self.max_per_client {
            return Err(Refusal::Client);
        }
        *n += 1;
        Ok(Slot { _permit: permit, owner: self.clone(), client })
    }

    /// Clients holding connections.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.per_client.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_slot() {
        let a = Admission::new(10, 4);
        let (bob, alice): (IpAddr, IpAddr) =
            ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let bobs: Vec<_> = (0..4).map(|_| a.admit(bob).unwrap()).collect();
        assert_eq!(a.admit(bob).unwrap_err(), Refusal::Client);
        let alices: Vec<_> = (0..4).map(|_| a.admit(alice).unwrap()).collect();
        drop(bobs);
        assert_eq!(a.clients(), 1);
        let more: Vec<_> = (0..2).map(|_| a.admit(bob).unwrap()).collect();
        // 4 + 2 of 10; then the cap in all.
        let carol: IpAddr = "10.0.0.3".parse().unwrap();
        let _c: Vec<_> = (0..4).map(|_| a.admit(carol).unwrap()).collect();
        assert_eq!(a.admit("10.0.0.4".parse().unwrap()).unwrap_err(), Refusal::Full);
        drop((alices, more));
        assert!(a.admit("10.0.0.4".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_hosts_sharing_a_64_count_apart() {
        let a = Admission::new(100, 2);
        let _s = (a.admit("fd00::1".parse().unwrap()), a.admit("fd00::1".parse().unwrap()));
        assert_eq!(a.admit("fd00::1".parse().unwrap()).unwrap_err(), Refusal::Client);
        assert!(a.admit("fd00::2".parse().unwrap()).is_ok());
    }

    #[test]
    fn a_refused_client_gives_back_the_permit() {
        let a = Admission::new(2, 1);
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let _s = a.admit(ip).unwrap();
        for _ in 0..10 {
            assert_eq!(a.admit(ip).unwrap_err(), Refusal::Client);
        }
        assert!(a.admit("10.0.0.3".parse().unwrap()).is_ok(), "the refusals held no permit");
    }
}
