//! Property: whatever workers do and however time moves, no recipient is
//! ever held by two live leases, and a lease records exactly when it still
//! holds all of its recipients. Real SQLite on disk, and PostgreSQL on a
//! throwaway cluster (a database per case).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use smtp_core::delivery::MemoryBody;
use smtp_queue::{Attempt, Body, Claimed, Error, MessageOptions, NewMessage, Outcome, RecipientId};

mod common;
use common::backend::Backend;

#[derive(Clone, Debug)]
enum Op {
    Claim {
        worker: u8,
        limit: u32,
        lease_secs: u64,
    },
    Advance(u64),
    Record {
        lease: usize,
        deliver: bool,
    },
    Release {
        lease: usize,
    },
    Renew {
        lease: usize,
        secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 1u32..4, 1u64..20).prop_map(|(worker, limit, lease_secs)| Op::Claim {
            worker,
            limit,
            lease_secs
        }),
        (0u64..15).prop_map(Op::Advance),
        (0usize..16, any::<bool>()).prop_map(|(lease, deliver)| Op::Record { lease, deliver }),
        (0usize..16).prop_map(|lease| Op::Release { lease }),
        (0usize..16, 1u64..20).prop_map(|(lease, secs)| Op::Renew { lease, secs }),
    ]
}

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

/// The model: which lease generation holds each recipient, until when.
type Held = HashMap<RecipientId, (i64, SystemTime)>;

async fn run(b: Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = b.open().await;
    let batch = (0..4)
        .map(|i| NewMessage {
            from: "a@example.com".into(),
            to: vec!["b@example.net".into(), "c@example.net".into()],
            body: Body::Source(Box::new(MemoryBody::new(format!("{i}\r\n")))),
            options: MessageOptions::default(),
        })
        .collect();
    store.enqueue(batch, t(0)).await.unwrap();
    let mut now = 0u64;
    let mut held = Held::new();
    let mut leases: Vec<Claimed> = Vec::new();
    for op in ops {
        let at = t(now);
        match op {
            Op::Advance(s) => now += s,
            Op::Claim {
                worker,
                limit,
                lease_secs,
            } => {
                let claimed = store
                    .claim_due(
                        at,
                        limit,
                        &format!("w{worker}"),
                        Duration::from_secs(lease_secs),
                    )
                    .await
                    .unwrap();
                for c in claimed {
                    for r in &c.recipients {
                        if let Some((generation, until)) = held.get(&r.id) {
                            prop_assert!(
                                *until <= at,
                                "{:?} still held by live lease {generation}",
                                r.id
                            );
                        }
                        held.insert(r.id, (c.lease.generation, c.lease.until));
                    }
                    leases.push(c);
                }
            }
            Op::Record { lease, deliver } => {
                let Some(c) = leases.get(lease % leases.len().max(1)) else {
                    continue;
                };
                let holds = c
                    .recipients
                    .iter()
                    .all(|r| held.get(&r.id).map(|h| h.0) == Some(c.lease.generation));
                let attempt = Attempt {
                    code: Some(if deliver { 250 } else { 451 }),
                    ..Attempt::default()
                };
                let outcomes = c
                    .recipients
                    .iter()
                    .map(|r| {
                        let o = if deliver {
                            Outcome::Delivered(attempt.clone())
                        } else {
                            Outcome::Deferred {
                                attempt: attempt.clone(),
                                next: at + Duration::from_secs(5),
                            }
                        };
                        (r.id, o)
                    })
                    .collect();
                match store.record(&c.lease, outcomes, at).await {
                    Ok(()) => {
                        prop_assert!(holds, "a stale lease recorded");
                        for r in &c.recipients {
                            held.remove(&r.id);
                        }
                    }
                    Err(Error::StaleLease { .. }) => {
                        prop_assert!(!holds, "a holding lease was refused");
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Op::Release { lease } => {
                let Some(c) = leases.get(lease % leases.len().max(1)) else {
                    continue;
                };
                let n = store.release(&c.lease, None, at).await.unwrap();
                let mine: Vec<_> = held
                    .iter()
                    .filter(|(id, h)| {
                        h.0 == c.lease.generation && c.recipients.iter().any(|r| r.id == **id)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                prop_assert_eq!(n, mine.len() as u64);
                for id in mine {
                    held.remove(&id);
                }
            }
            Op::Renew { lease, secs } => {
                let Some(c) = leases.get(lease % leases.len().max(1)) else {
                    continue;
                };
                let until = at + Duration::from_secs(secs);
                // A lease is its message and generation (one claim's
                // messages share a generation).
                let mine = |id: &RecipientId| c.recipients.iter().any(|r| r.id == *id);
                let holds_any = held
                    .iter()
                    .any(|(id, h)| h.0 == c.lease.generation && mine(id));
                match store.renew(&c.lease, until, at).await {
                    Ok(_) => {
                        prop_assert!(holds_any);
                        for (_, h) in held
                            .iter_mut()
                            .filter(|(id, h)| h.0 == c.lease.generation && mine(id))
                        {
                            h.1 = until;
                        }
                    }
                    Err(Error::StaleLease { .. }) => {
                        prop_assert!(!holds_any);
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn no_recipient_is_ever_held_by_two_live_leases(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(Backend::sqlite(), ops))?;
    }

    #[test]
    fn no_recipient_is_ever_held_by_two_live_leases_on_postgres(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(Backend::postgres(), ops))?;
    }
}
