//! The ring-buffer reader: one thread that sleeps in poll(2) until the kernel wakes it (a batch is
//! pending) or the poll interval passes, drains every record, decodes it into an owned event and
//! hands batches to the processing stage through a bounded queue. The reader never blocks on
//! the stages after it: when the queue is full, the data events of the batch are dropped and
//! counted, and its connection events are held (up to [`MAX_HELD`], beyond which they are
//! dropped and counted too) to go first in the next batch the queue takes. A close carries the
//! kernel's byte totals, so byte counts stay exact through a backlog.

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use meshtap_common::kind;
use tokio::sync::mpsc;

use crate::{
    ebpf::telemetry::{KernelMetrics, KindLabels, LostLabels},
    event::{Batch, Event, kind_name},
};

/// Events per batch handed to the processing stage.
pub const BATCH: usize = 256;
/// Connection events held while the processing queue is full.
pub const MAX_HELD: usize = 16_384;

pub struct Reader {
    pub ring: RingBuf<MapData>,
    pub queue: mpsc::Sender<Batch>,
    pub metrics: Arc<KernelMetrics>,
    pub poll_interval: Duration,
    pub stop: Arc<AtomicBool>,
    /// See [`Drained`].
    pub drained: Arc<Drained>,
}

/// How far the pipeline is known to be complete: the monotonic time (ns) at which the reader
/// last found the ring buffer empty, having queued everything before it and holding nothing
/// back. Every event stamped well before it (see [`Drained::complete_before`]) is then in the
/// processing queue or already processed. It lets the processing stage move its clock on when
/// the node is quiet, instead of waiting seconds in case events were still on their way.
#[derive(Default)]
pub struct Drained(AtomicU64);

/// How long a BPF program may take between stamping an event and committing it to the ring
/// (microseconds in practice; a program cannot sleep).
const COMMIT_MARGIN_NS: u64 = 50_000_000;

impl Drained {
    fn publish(&self, ns: u64) {
        self.0.store(ns, Ordering::Release);
    }

    /// Events stamped before the returned time have all been queued (0 if nothing is known).
    /// Read it before checking that the queue is empty: then they have all been processed.
    pub fn complete_before(&self) -> u64 {
        self.0
            .load(Ordering::Acquire)
            .saturating_sub(COMMIT_MARGIN_NS)
    }
}

impl Reader {
    pub fn run(mut self) {
        let fd = self.ring.as_raw_fd();
        let timeout = self.poll_interval.as_millis().min(i32::MAX as u128) as i32;
        let mut delivered = [0u64; kind::COUNT as usize];
        let mut dropped = [0u64; kind::COUNT as usize];
        let mut decode_errors = 0u64;
        let mut held: Vec<Event> = Vec::new();
        // Payload bytes of the last batch: the next one starts at that capacity.
        let mut last_payload_bytes = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call; the ring buffer fd
            // stays open because `self.ring` outlives the loop.
            unsafe { libc::poll(&mut pfd, 1, timeout) };

            loop {
                // Before the reads: if they come to the end of the ring, every event committed
                // before this instant has been read.
                let started_ns = crate::clock::monotonic_ns();
                let mut batch = Batch::with_capacity(BATCH, last_payload_bytes);
                while batch.events.len() < BATCH {
                    let Some(record) = self.ring.next() else {
                        break;
                    };
                    if let Err(err) = batch.push_record(&record) {
                        decode_errors += 1;
                        log::debug!("undecodable ring-buffer record: {err}");
                    }
                }
                let drained = batch.events.len() < BATCH;
                last_payload_bytes = batch.payloads.len();
                if !batch.events.is_empty() || !held.is_empty() {
                    send(&self.queue, batch, &mut held, &mut delivered, &mut dropped);
                }
                if drained {
                    if held.is_empty() {
                        self.drained.publish(started_ns);
                    }
                    break;
                }
            }
            self.flush(&mut delivered, &mut dropped, &mut decode_errors);
        }
        for event in held {
            dropped[event.kind() as usize] += 1;
        }
        self.flush(&mut delivered, &mut dropped, &mut decode_errors);
    }

    /// Publishes the counts of one drain: metric updates once per drain, not per event.
    fn flush(&self, delivered: &mut [u64], dropped: &mut [u64], decode_errors: &mut u64) {
        for k in 1..kind::COUNT as usize {
            if delivered[k] > 0 {
                self.metrics
                    .events
                    .get_or_create(&KindLabels {
                        kind: kind_name(k as u8).to_string(),
                    })
                    .inc_by(delivered[k]);
                delivered[k] = 0;
            }
            if dropped[k] > 0 {
                self.metrics
                    .events_lost
                    .get_or_create(&LostLabels {
                        stage: "userspace_queue".to_string(),
                        kind: kind_name(k as u8).to_string(),
                    })
                    .inc_by(dropped[k]);
                dropped[k] = 0;
            }
        }
        if *decode_errors > 0 {
            self.metrics.decode_errors.inc_by(*decode_errors);
            *decode_errors = 0;
        }
    }
}

/// Queues one batch, after the connection events held from earlier ones (they are older).
/// `meshtap_events_total` counts what entered processing. If the queue cannot take it, its
/// data events are counted per kind as lost in stage `userspace_queue` and its connection
/// events are held, as many as `MAX_HELD` allows (the rest are counted lost).
fn send(
    queue: &mpsc::Sender<Batch>,
    mut batch: Batch,
    held: &mut Vec<Event>,
    delivered: &mut [u64],
    dropped: &mut [u64],
) {
    // Reserve first: while the queue stays full, a batch costs O(batch), not a pass over
    // everything held.
    let Ok(permit) = queue.try_reserve() else {
        for event in batch.events {
            if event.kind() != kind::DATA && held.len() < MAX_HELD {
                held.push(event);
            } else {
                dropped[event.kind() as usize] += 1;
            }
        }
        return;
    };
    if !held.is_empty() {
        // Held events are connection events: no payload, so the batch's ranges stay valid.
        held.append(&mut batch.events);
        batch.events = std::mem::take(held);
    }
    for event in &batch.events {
        delivered[event.kind() as usize] += 1;
    }
    permit.send(batch);
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::event::{ConnTotals, Direction, Meta, PayloadRange, Process, Role};

    fn meta() -> Meta {
        Meta {
            ts_ns: 1,
            conn_id: 7,
            sk: 1,
            netns: 1,
            role: Role::Client,
            pre_existing: false,
            tls_probed: false,
            local: "127.0.0.1:5000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            process: Process {
                tgid: 1,
                tid: 1,
                start_ns: 1,
                cgroup_id: 1,
                comm: "c".into(),
            },
        }
    }

    fn data() -> Event {
        Event::Data {
            meta: meta(),
            bytes: 3,
            parse_bytes: 3,
            seq: 0,
            tcp_seq: 0,
            direction: Direction::Egress,
            syscall: 1,
            payload: PayloadRange::whole(b"abc"),
            more: false,
        }
    }

    /// A batch whose data events all point at one "abc" payload.
    fn batch(events: Vec<Event>) -> Batch {
        Batch {
            events,
            payloads: b"abc".to_vec(),
        }
    }

    fn close() -> Event {
        Event::ConnClose {
            meta: meta(),
            totals: ConnTotals::default(),
        }
    }

    /// What `send` keeps between calls: held events, delivered and dropped counts per kind.
    type State = (
        Vec<Event>,
        [u64; kind::COUNT as usize],
        [u64; kind::COUNT as usize],
    );

    fn send_events(tx: &mpsc::Sender<Batch>, events: Vec<Event>, state: &mut State) {
        let (held, delivered, dropped) = state;
        send(tx, batch(events), held, delivered, dropped);
    }

    #[test]
    fn a_full_queue_drops_data_and_holds_connection_events_for_the_next_batch() {
        let (tx, mut rx) = mpsc::channel::<Batch>(1);
        let mut state: State = (Vec::new(), Default::default(), Default::default());
        send_events(&tx, vec![data()], &mut state);
        assert_eq!(state.1[kind::DATA as usize], 1);
        // Full: the data events go, the close waits.
        send_events(&tx, vec![data(), close(), data()], &mut state);
        let (held, delivered, dropped) = &state;
        assert_eq!(dropped[kind::DATA as usize], 2);
        assert_eq!(dropped[kind::CONN_CLOSE as usize], 0);
        assert_eq!(held.len(), 1);
        assert_eq!(delivered[kind::DATA as usize], 1);
        assert_eq!(rx.try_recv().unwrap().events.len(), 1);
        // Room again: the held close goes first, before the newer events, whose payload is
        // still where its range says.
        send_events(&tx, vec![data()], &mut state);
        let got = rx.try_recv().unwrap();
        let kinds: Vec<u8> = got.events.iter().map(Event::kind).collect();
        assert_eq!(kinds, [kind::CONN_CLOSE, kind::DATA]);
        let Event::Data { payload, .. } = &got.events[1] else {
            panic!("not data: {:?}", got.events[1]);
        };
        assert_eq!(payload.of(&got.payloads), b"abc");
        let (held, delivered, _) = &state;
        assert!(held.is_empty());
        assert_eq!(delivered[kind::CONN_CLOSE as usize], 1);
        assert_eq!(delivered[kind::DATA as usize], 2);
    }

    #[test]
    fn held_connection_events_are_bounded_and_the_rest_counted() {
        let (tx, _rx) = mpsc::channel::<Batch>(1);
        tx.try_send(Batch::default()).unwrap();
        let mut state: State = (Vec::new(), Default::default(), Default::default());
        send_events(
            &tx,
            (0..MAX_HELD + 5).map(|_| close()).collect(),
            &mut state,
        );
        let (held, delivered, dropped) = &state;
        assert_eq!(held.len(), MAX_HELD);
        assert_eq!(dropped[kind::CONN_CLOSE as usize], 5);
        assert_eq!(delivered.iter().sum::<u64>(), 0);
    }
}
