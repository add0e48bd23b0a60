//! The UDP fast path: a packet cache in front of hickory's catalog, as PowerDNS has one.
//!
//! An authoritative server answers the same few questions over and over, and its answers change only when
//! its zones do. So the public UDP socket is served by one loop that parses just the header and question,
//! looks the question up in a map of finished answers, patches in the query's ID and question (its exact
//! case, for clients that randomise it) and sends. A question not in the map is relayed to hickory on a
//! private loopback socket, and its answer is stored for next time. Every zone change clears the map, and an
//! answer computed against the old zones is not stored.
//!
//! With hickory alone (a task, a `Request` and several allocations per query) Portico answered 0.4 times
//! what BIND did in `bench/run.sh dns`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Answers kept at most (a flood of random names must not grow the map without bound).
const CAPACITY: usize = 65_536;
/// The largest UDP query read whole (hickory's own limit); a question with EDNS fits in far less.
const MAX_QUERY: usize = 4096;
/// Queries relayed to hickory at once at most; beyond, a query is dropped (the client retries), so that a flood
/// of names never asked before cannot take every file descriptor.
const MAX_RELAYS: usize = 1024;
/// How long a relayed query may wait for hickory.
const RELAY_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer relayed back (hickory truncates UDP answers to the client's EDNS size).
const MAX_ANSWER: usize = 65_535;

/// Finished answers by question, and the zone generation they were computed for.
#[derive(Default)]
pub struct PacketCache {
    answers: Mutex<HashMap<Vec<u8>, Answer>>,
    generation: AtomicU64,
}

/// A cached answer: its header flags, its four section counts, and everything after the question.
struct Answer {
    flags: [u8; 2],
    counts: [u8; 8],
    tail: Vec<u8>,
}

impl PacketCache {
    /// Forgets every answer: the zones changed.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        lock(&self.answers).clear();
    }

    fn get(&self, key: &[u8], query: &[u8], question_end: usize, out: &mut Vec<u8>) -> bool {
        let answers = lock(&self.answers);
        let Some(answer) = answers.get(key) else { return false };
        out.clear();
        out.extend_from_slice(&query[..2]);
        out.extend_from_slice(&answer.flags);
        out.extend_from_slice(&answer.counts);
        out.extend_from_slice(&query[12..question_end]);
        out.extend_from_slice(&answer.tail);
        true
    }

    fn insert(&self, key: Vec<u8>, response: &[u8], question_end: usize, generation: u64) {
        let mut answers = lock(&self.answers);
        // Computed against zones that have changed since: not stored.
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if answers.len() >= CAPACITY {
            answers.clear();
        }
        let mut flags = [0; 2];
        flags.copy_from_slice(&response[2..4]);
        let mut counts = [0; 8];
        counts.copy_from_slice(&response[4..12]);
        answers.insert(key, Answer { flags, counts, tail: response[question_end..].to_vec() });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What identifies an answer: the question (name lower-cased), the query's flags that the answer echoes (RD,
/// CD), and its EDNS settings (payload size and DO, which decide truncation and the OPT record). `None` for
/// anything the fast path does not take (not a plain query, several questions, other additional records):
/// hickory answers those every time. Also returns where the question ends.
fn cache_key(query: &[u8], key: &mut Vec<u8>) -> Option<usize> {
    if query.len() < 12 + 5 {
        return None;
    }
    let flags = u16::from_be_bytes([query[2], query[3]]);
    let (qr, opcode) = (flags >> 15, (flags >> 11) & 0xf);
    let counts = |at: usize| u16::from_be_bytes([query[at], query[at + 1]]);
    if qr != 0 || opcode != 0 || counts(4) != 1 || counts(6) != 0 || counts(8) != 0 || counts(10) > 1 {
        return None;
    }
    key.clear();
    // The question name, label by label (queries carry no compression).
    let mut at = 12;
    loop {
        let length = usize::from(*query.get(at)?);
        if length == 0 {
            key.push(0);
            at += 1;
            break;
        }
        if length > 63 {
            return None;
        }
        let label = query.get(at + 1..at + 1 + length)?;
        key.push(length as u8);
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        at += 1 + length;
    }
    let question_end = at + 4;
    key.extend_from_slice(query.get(at..question_end)?);
    // RD and CD are echoed in the answer.
    key.push(query[2] & 0x01);
    key.push(query[3] & 0x10);
    match counts(10) {
        0 if question_end == query.len() => key.push(0),
        // One OPT record with an empty root name and no options: its payload size and DO bit.
        1 if query.len() == question_end + 11
            && query[question_end] == 0
            && query[question_end + 1..question_end + 3] == [0, 41]
            && query[question_end + 9..question_end + 11] == [0, 0] =>
        {
            key.push(1);
            key.extend_from_slice(&query[question_end + 3..question_end + 5]);
            key.extend_from_slice(&query[question_end + 5..question_end + 9]);
        }
        _ => return None,
    }
    Some(question_end)
}

/// Serves `public` from the cache, relaying misses to hickory at `hickory`, until the task is aborted.
pub async fn serve(public: UdpSocket, hickory: SocketAddr, cache: Arc<PacketCache>) {
    let public = Arc::new(public);
    let relays = Arc::new(tokio::sync::Semaphore::new(MAX_RELAYS));
    let mut query = vec![0u8; MAX_QUERY];
    let mut key = Vec::with_capacity(300);
    let mut answer = Vec::with_capacity(512);
    loop {
        let (length, client) = match public.recv_from(&mut query).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors of earlier sends surface here on some systems: not fatal.
                tracing::debug!(%error, "dns: receive failed");
                continue;
            }
        };
        let query = &query[..length];
        let question_end = cache_key(query, &mut key);
        if let Some(question_end) = question_end
            && cache.get(&key, query, question_end, &mut answer)
        {
            let _ = public.send_to(&answer, client).await;
            continue;
        }
        let query_copy = query.to_vec();
        let Ok(permit) = relays.clone().try_acquire_owned() else {
            tracing::debug!(%client, "dns: too many queries in flight to the zone handler; dropped");
            continue;
        };
        let relay = Relay {
            public: public.clone(),
            hickory,
            cache: cache.clone(),
            generation: cache.generation.load(Ordering::SeqCst),
            cacheable: question_end.map(|end| (std::mem::take(&mut key), end)),
        };
        tokio::spawn(async move {
            relay.run(query_copy, client).await;
            drop(permit);
        });
    }
}

/// A query hickory answers: sent from a socket of its own, the answer passed back and maybe stored.
struct Relay {
    public: Arc<UdpSocket>,
    hickory: SocketAddr,
    cache: Arc<PacketCache>,
    generation: u64,
    cacheable: Option<(Vec<u8>, usize)>,
}

impl Relay {
    async fn run(self, query: Vec<u8>, client: SocketAddr) {
        let local: SocketAddr =
            if self.hickory.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { (std::net::Ipv6Addr::LOCALHOST, 0).into() };
        let Ok(socket) = UdpSocket::bind(local).await else { return };
        // Connected: only hickory's answers are read (no other local process can slip one into the cache).
        if socket.connect(self.hickory).await.is_err() || socket.send(&query).await.is_err() {
            return;
        }
        let mut response = vec![0u8; MAX_ANSWER];
        let Ok(Ok(length)) = tokio::time::timeout(RELAY_TIMEOUT, socket.recv(&mut response)).await else { return };
        let response = &response[..length];
        let _ = self.public.send_to(response, client).await;
        // Stored only when it answers this very question in full: same ID and question, not truncated,
        // NOERROR or NXDOMAIN (a SERVFAIL or REFUSED may be passing).
        if let Some((key, question_end)) = self.cacheable
            && response.len() >= question_end
            && response[..2] == query[..2]
            && response[12..question_end] == query[12..question_end]
            && response[2] & 0x02 == 0
            && matches!(response[3] & 0x0f, 0 | 3)
        {
            self.cache.insert(key, response, question_end, self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], qtype: u16, edns: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        for label in name {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn questions_differing_in_case_share_an_answer_and_others_do_not() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let end = cache_key(&query(&["WWW", "Example", "org"], 1, false), &mut a).expect("plain query");
        cache_key(&query(&["www", "example", "org"], 1, false), &mut b).expect("plain query");
        assert_eq!(a, b);
        assert_eq!(end, 12 + 17 + 4);
        cache_key(&query(&["www", "example", "org"], 28, false), &mut b).expect("AAAA");
        assert_ne!(a, b, "another type");
        cache_key(&query(&["www", "example", "org"], 1, true), &mut b).expect("with EDNS");
        assert_ne!(a, b, "EDNS changes the answer");
    }

    #[test]
    fn only_plain_queries_take_the_fast_path() {
        let mut key = Vec::new();
        let mut update = query(&["example", "org"], 6, false);
        update[2] = 0x28; // opcode UPDATE
        assert!(cache_key(&update, &mut key).is_none());
        let mut answer = query(&["example", "org"], 1, false);
        answer[2] |= 0x80; // a response
        assert!(cache_key(&answer, &mut key).is_none());
        let mut signed = query(&["example", "org"], 1, false);
        signed[11] = 1; // an additional record that is not there (or a TSIG)
        assert!(cache_key(&signed, &mut key).is_none());
        assert!(cache_key(&[0; 11], &mut key).is_none(), "short");
    }

    #[test]
    fn a_cached_answer_carries_the_query_id_and_case_and_a_change_of_zones_drops_it() {
        let cache = PacketCache::default();
        let first = query(&["www", "example", "org"], 1, false);
        let mut key = Vec::new();
        let end = cache_key(&first, &mut key).expect("key");
        let mut response = first.clone();
        response[2] |= 0x84; // QR, AA
        response[7] = 1; // one answer
        response.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        cache.insert(key.clone(), &response, end, 0);
        let mut second = query(&["WWW", "example", "ORG"], 1, false);
        second[0] = 0xab;
        let mut out = Vec::new();
        let end2 = cache_key(&second, &mut key).expect("key");
        assert!(cache.get(&key, &second, end2, &mut out));
        assert_eq!(out[..2], [0xab, 0x34], "the query's ID");
        assert_eq!(out[12..end2], second[12..end2], "the query's question, in its case");
        assert_eq!(out[end2..], response[end..], "the answer");
        cache.clear();
        assert!(!cache.get(&key, &second, end2, &mut out), "cleared with the zones");
        cache.insert(key.clone(), &response, end, 0);
        assert!(!cache.get(&key, &second, end2, &mut out), "computed for the old zones: not stored");
    }
}
