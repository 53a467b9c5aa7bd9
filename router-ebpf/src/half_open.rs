//! The half-open table (`HALF_OPEN4`): connections from their SYN until the client acknowledges
//! the backend's SYN-ACK. A spoofed SYN never gets that far, so a flood of them lives and dies
//! here: the table is bounded by a per-CPU ring of admissions (`HALF_OPEN_RING`, cursor in
//! `HALF_OPEN_NEXT`), and a SYN arriving when its CPU's ring is full evicts the oldest half-open
//! connection that CPU admitted, freeing its NAT tuple. The NAT tuples half-open connections
//! hold toward a backend are thus at most the ring's size, far below the ~64 500 one backend
//! address and port offer; confirmed connections (`CT4`) are never touched by a SYN.
//!
//! Confirmation needs the client's ACK to carry the backend's initial sequence number + 1
//! (recorded from the SYN-ACK): a blind spoofer sending SYN then ACK cannot move an entry into
//! `CT4`.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use router_common::{
    conntrack::{
        CtKey4, CtValue4, HalfOpen4, HalfOpenCursor, HalfOpenSlot, TCP_ACK, TCP_FIN, TCP_RST,
        TCP_SYN, TICKET_CPU_BITS,
    },
    stats::StatReason,
};

use crate::conntrack;
use crate::ctx::Packet;
use crate::parse::{TCP_ACK_SEQ, TCP_SEQ, load32};
use crate::verdict::{Verdict, drop};

/// Sized by the daemon at load time: two entries per ring slot of every CPU, plus room for the
/// pair each CPU inserts before its admission evicts.
#[map(name = "HALF_OPEN4")]
static HALF_OPEN4: HashMap<CtKey4, HalfOpen4> = HashMap::with_max_entries(1024, 0);

/// Sized by the daemon at load time: slots per CPU (the half-open capacity divided by the
/// possible CPUs). The program learns the length by running off its end.
#[map(name = "HALF_OPEN_RING")]
static HALF_OPEN_RING: PerCpuArray<HalfOpenSlot> = PerCpuArray::with_max_entries(256, 0);

#[map(name = "HALF_OPEN_NEXT")]
static HALF_OPEN_NEXT: PerCpuArray<HalfOpenCursor> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn lookup(key: &CtKey4) -> Option<*mut HalfOpen4> {
    HALF_OPEN4.get_ptr_mut(key)
}

/// Inserts `value` under `key` unless the key exists.
#[inline(always)]
pub fn insert_new(key: &CtKey4, value: &HalfOpen4) -> bool {
    HALF_OPEN4.insert(key, value, BPF_NOEXIST as u64).is_ok()
}

#[inline(always)]
pub fn remove(key: &CtKey4) {
    let _ = HALF_OPEN4.remove(key);
}

/// The ticket the next admission on this CPU gets (see [`admit`]).
#[inline(always)]
pub fn next_ticket() -> u64 {
    let admitted = match HALF_OPEN_NEXT.get(0) {
        Some(cursor) => cursor.admitted,
        None => 0,
    };
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    ((admitted + 1) << TICKET_CPU_BITS) | (cpu & ((1 << TICKET_CPU_BITS) - 1))
}

/// Records the pair with forward key `key` (both entries inserted with `ticket`, from
/// [`next_ticket`]) in this CPU's ring, evicting the pair the slot held if it is still
/// half-open. Returns whether it evicted one.
#[inline(always)]
pub fn admit(key: &CtKey4, ticket: u64) -> bool {
    let Some(cursor) = HALF_OPEN_NEXT.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs on one CPU do not interleave.
    let cursor = unsafe { &mut *cursor };
    let mut index = cursor.next;
    let slot = match HALF_OPEN_RING.get_ptr_mut(index) {
        Some(slot) => slot,
        None => {
            index = 0;
            match HALF_OPEN_RING.get_ptr_mut(0) {
                Some(slot) => slot,
                None => return false,
            }
        }
    };
    // SAFETY: as above.
    let slot = unsafe { &mut *slot };
    let evicted = slot.ticket != 0 && evict(&slot.key, slot.ticket);
    slot.key = *key;
    slot.ticket = ticket;
    cursor.next = index + 1;
    cursor.admitted += 1;
    evicted
}

/// Removes the pair whose forward entry is `key` if it still carries `ticket` (it may have been
/// confirmed, expired, or replaced by a later pair on the same client tuple).
#[inline(always)]
fn evict(key: &CtKey4, ticket: u64) -> bool {
    let Some(fwd) = HALF_OPEN4.get_ptr(key) else {
        return false;
    };
    // SAFETY: a map value pointer from the look-up, read before any removal.
    let fwd = unsafe { &*fwd };
    if fwd.ticket != ticket {
        return false;
    }
    let reply_key = CtKey4::partner_of(&fwd.ct);
    if let Some(reply) = HALF_OPEN4.get_ptr(&reply_key)
        // SAFETY: as above.
        && unsafe { (*reply).ticket } == ticket
    {
        remove(&reply_key);
    }
    remove(key);
    true
}

/// What to do with a packet that has no `CT4` entry.
pub enum Step {
    /// No half-open connection has its tuple either.
    Missing,
    /// Translate and send it on by this entry, counted as this reason.
    Forward(*mut CtValue4, StatReason),
    /// Already decided (and counted).
    Done(Verdict),
}

/// A packet of a half-open connection: the backend's SYN-ACK records the acknowledgment number
/// that completes the handshake; the client's ACK carrying it moves the pair into `CT4`;
/// anything else is translated by the half-open entry. `key` is the packet's tuple, `flags` its
/// TCP flags, `tcp` its (bounds-checked, 20-byte) TCP header.
#[inline(always)]
pub fn handle<P: Packet>(p: &P, tcp: usize, key: &CtKey4, flags: u8) -> Step {
    let Some(entry) = lookup(key) else {
        return Step::Missing;
    };
    // SAFETY: a map value pointer from the look-up.
    let v = unsafe { &mut *entry };
    let handshake = flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
    if v.ct.to_client() {
        if handshake == TCP_SYN | TCP_ACK {
            v.ct.awaited_ack = u32::from_be(load32(tcp + TCP_SEQ)).wrapping_add(1);
        } else if handshake & TCP_RST == 0 {
            return Step::Forward(&mut v.ct, StatReason::ForwardedBeforeHandshake);
        }
    } else if handshake & (TCP_SYN | TCP_RST) == 0 && handshake & TCP_ACK != 0 {
        if let Some(step) = confirm(p, tcp, key, v) {
            return step;
        }
    } else if handshake == TCP_SYN && restart_if_ended(v) {
        return Step::Forward(&mut v.ct, StatReason::NewConnection);
    }
    Step::Forward(&mut v.ct, StatReason::Forwarded)
}

/// A SYN on forward entry `fwd` (a retransmission, or the client trying again on the tuple of
/// an attempt that was refused or aborted): when either side saw a RST or a FIN, clears what
/// the pair saw, so it starts afresh on the same tuple toward the backend, and returns true.
#[inline(always)]
fn restart_if_ended(fwd: &mut HalfOpen4) -> bool {
    const ENDED: u8 = TCP_RST | TCP_FIN;
    let reply = match lookup(&CtKey4::partner_of(&fwd.ct)) {
        // SAFETY: a map value pointer from the look-up.
        Some(reply) if unsafe { (*reply).ticket } == fwd.ticket => Some(reply),
        _ => None,
    };
    // SAFETY: as above.
    let reply_ended = reply.is_some_and(|r| unsafe { (*r).ct.tcp_flags } & ENDED != 0);
    if fwd.ct.tcp_flags & ENDED == 0 && !reply_ended {
        return false;
    }
    fwd.ct.tcp_flags = 0;
    if let Some(reply) = reply {
        // SAFETY: as above.
        let reply = unsafe { &mut *reply };
        reply.ct.tcp_flags = 0;
        reply.ct.awaited_ack = 0;
    }
    true
}

/// The client's ACK on half-open forward entry `fwd`: when it acknowledges the backend's
/// SYN-ACK, copies both entries into `CT4` (taking back a tombstone of this client tuple's own
/// last connection on the tuple), counts the connection, removes the half-open pair and returns
/// the `CT4` entry to forward by. `None`: not the completing ACK (forwarded as it is).
#[inline(always)]
fn confirm<P: Packet>(p: &P, tcp: usize, key: &CtKey4, fwd: &mut HalfOpen4) -> Option<Step> {
    let reply_key = CtKey4::partner_of(&fwd.ct);
    // SAFETY: a map value pointer from the look-up.
    let reply = unsafe { &*lookup(&reply_key)? };
    if reply.ticket != fwd.ticket
        || reply.ct.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK
        || reply.ct.awaited_ack != u32::from_be(load32(tcp + TCP_ACK_SEQ))
    {
        return None;
    }
    let max = match crate::config::settings() {
        Some(s) => s.max_connections as u64,
        None => return None,
    };
    if conntrack::live() >= max {
        // The pair stays: the client's next segment completes it once there is room.
        return Some(Step::Done(drop(p, StatReason::DropTableFull)));
    }
    let client_side = key.swapped();
    if !conntrack::insert_new(&reply_key, &reply.ct) {
        let Some(taken) = conntrack::lookup(&reply_key) else {
            return Some(Step::Done(drop(p, StatReason::DropConntrackInsert)));
        };
        // SAFETY: a map value pointer from the look-up, copied out at once.
        let taken = unsafe { *taken };
        // A tombstone is taken over: `nat::reserve_reply` let this connection have its tuple
        // (this client tuple's own, or both connections translate timestamps).
        if !taken.is_tombstone() && taken.rewritten() != client_side {
            // Another connection holds the tuple in CT4 (it was free when reserved): this one
            // cannot complete; the client's retransmitted SYN opens it anew.
            remove(&reply_key);
            remove(key);
            return Some(Step::Done(drop(p, StatReason::DropConntrackInsert)));
        }
        if !taken.is_tombstone() {
            // Confirmed a moment ago on another CPU (a duplicated ACK).
            return Some(match conntrack::lookup(key) {
                Some(e) => Step::Forward(e, StatReason::Forwarded),
                None => Step::Done(drop(p, StatReason::DropConntrackInsert)),
            });
        }
        if !conntrack::replace(&reply_key, &reply.ct) {
            return Some(Step::Done(drop(p, StatReason::DropConntrackInsert)));
        }
    }
    if !conntrack::insert_new(key, &fwd.ct) {
        return Some(match conntrack::lookup(key) {
            Some(e) => Step::Forward(e, StatReason::Forwarded),
            None => Step::Done(drop(p, StatReason::DropConntrackInsert)),
        });
    }
    conntrack::count_created();
    remove(&reply_key);
    remove(key);
    Some(match conntrack::lookup(key) {
        Some(e) => Step::Forward(e, StatReason::HandshakeConfirmed),
        None => Step::Done(drop(p, StatReason::DropConntrackInsert)),
    })
}
