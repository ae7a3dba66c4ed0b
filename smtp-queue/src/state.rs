//! A recipient's states and the transitions between them, written on one
//! type: every change the store makes goes through [`RecipientState::apply`],
//! which refuses the ones the queue's contract forbids.
//!
//! ```text
//!            enqueue
//!               │
//!               ▼        claim (lease)          deliver (2xx to end of data)
//!  ┌──────►  queued  ─────────────────►  delivering ─────────────────► delivered
//!  │  retry     ▲                         │  │  │  ▲   fail (5xx)
//!  │            └──── release ────────────┘  │  │  └── claim: an expired lease taken over
//!  │                  (not attempted)        │  └────────────────────► failed
//!  │                                  defer  ▼
//!  └──────────────────────────────────  deferred ──── claim ──► delivering
//!                                            │
//!        expire (past the lifetime: from queued, deferred or delivering)
//!                                            ▼
//!                                         expired
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a recipient is on its way to an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    /// Waiting for its first attempt (or for a retry an operator asked for).
    Queued,
    /// Held by a worker under a lease: an attempt is under way.
    Delivering,
    /// The server answered 2xx to the end of the message's data. Final.
    Delivered,
    /// The server refused it permanently (5xx). Final.
    Failed,
    /// A temporary failure; waiting for the next attempt.
    Deferred,
    /// Still undelivered when the message's lifetime ran out. Final.
    Expired,
}

/// A change asked of a recipient's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    /// A worker takes the recipient under a lease (also: takes over one
    /// whose lease expired).
    Claim,
    /// The 2xx to the end of data arrived.
    Deliver,
    /// A permanent (5xx) refusal.
    Fail,
    /// A temporary failure: try again later.
    Defer,
    /// The lifetime ran out.
    Expire,
    /// The worker gives the recipient back without an outcome, e.g. because
    /// its destination is backed off. `attempted` says whether it has been
    /// attempted before (it goes back to `deferred`, else `queued`).
    Release {
        /// Attempted at least once before this lease.
        attempted: bool,
    },
    /// An operator asks for an attempt now.
    Retry,
}

/// A transition the state machine refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IllegalTransition {
    /// The state the recipient was in.
    pub from: RecipientState,
    /// The refused change.
    pub transition: Transition,
}

impl RecipientState {
    /// Every state, in the order of the diagram.
    pub const ALL: [Self; 6] = [
        Self::Queued,
        Self::Delivering,
        Self::Delivered,
        Self::Failed,
        Self::Deferred,
        Self::Expired,
    ];

    /// The state after `transition`, or why it is refused.
    pub fn apply(self, transition: Transition) -> Result<Self, IllegalTransition> {
        use RecipientState::*;
        let next = match (self, transition) {
            (Queued | Deferred | Delivering, Transition::Claim) => Some(Delivering),
            (Delivering, Transition::Deliver) => Some(Delivered),
            (Delivering, Transition::Fail) => Some(Failed),
            (Delivering, Transition::Defer) => Some(Deferred),
            (Queued | Deferred | Delivering, Transition::Expire) => Some(Expired),
            (Delivering, Transition::Release { attempted: false }) => Some(Queued),
            (Delivering, Transition::Release { attempted: true }) => Some(Deferred),
            (Queued | Deferred, Transition::Retry) => Some(Queued),
            _ => None,
        };
        next.ok_or(IllegalTransition {
            from: self,
            transition,
        })
    }

    /// Delivered, failed or expired: nothing will change it again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed | Self::Expired)
    }

    /// Waiting for an attempt (queued or deferred).
    pub fn is_waiting(self) -> bool {
        matches!(self, Self::Queued | Self::Deferred)
    }

    /// The name stored in the database and written to the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Delivering => "delivering",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Deferred => "deferred",
            Self::Expired => "expired",
        }
    }
}

impl fmt::Display for RecipientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown recipient state {:?}", self.0)
    }
}

impl std::error::Error for UnknownState {}

impl FromStr for RecipientState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} recipient cannot take the transition {:?}",
            self.from, self.transition
        )
    }
}

impl std::error::Error for IllegalTransition {}

#[cfg(test)]
mod tests {
    use super::RecipientState::*;
    use super::*;

    const ALL_TRANSITIONS: [Transition; 8] = [
        Transition::Claim,
        Transition::Deliver,
        Transition::Fail,
        Transition::Defer,
        Transition::Expire,
        Transition::Release { attempted: false },
        Transition::Release { attempted: true },
        Transition::Retry,
    ];

    #[test]
    fn the_happy_path_goes_queued_delivering_delivered() {
        let s = Queued.apply(Transition::Claim).unwrap();
        assert_eq!(s, Delivering);
        assert_eq!(s.apply(Transition::Deliver).unwrap(), Delivered);
    }

    #[test]
    fn a_deferred_recipient_is_claimed_again_and_can_expire() {
        let s = Delivering.apply(Transition::Defer).unwrap();
        assert_eq!(s, Deferred);
        assert_eq!(s.apply(Transition::Claim).unwrap(), Delivering);
        assert_eq!(s.apply(Transition::Expire).unwrap(), Expired);
    }

    #[test]
    fn final_states_refuse_every_transition() {
        for state in [Delivered, Failed, Expired] {
            assert!(state.is_final());
            for t in ALL_TRANSITIONS {
                let err = state.apply(t).unwrap_err();
                assert_eq!(
                    err,
                    IllegalTransition {
                        from: state,
                        transition: t
                    }
                );
            }
        }
    }

    #[test]
    fn outcomes_are_recorded_only_under_a_lease() {
        for state in [Queued, Deferred] {
            for t in [Transition::Deliver, Transition::Fail, Transition::Defer] {
                assert!(state.apply(t).is_err(), "{state} {t:?}");
            }
            assert!(
                state
                    .apply(Transition::Release { attempted: false })
                    .is_err()
            );
        }
    }

    #[test]
    fn a_recipient_under_a_lease_cannot_be_retried_by_an_operator() {
        assert!(Delivering.apply(Transition::Retry).is_err());
    }

    #[test]
    fn release_returns_to_queued_or_deferred_by_whether_it_was_attempted() {
        assert_eq!(
            Delivering
                .apply(Transition::Release { attempted: false })
                .unwrap(),
            Queued
        );
        assert_eq!(
            Delivering
                .apply(Transition::Release { attempted: true })
                .unwrap(),
            Deferred
        );
    }

    #[test]
    fn state_names_round_trip() {
        for state in RecipientState::ALL {
            assert_eq!(state.as_str().parse::<RecipientState>().unwrap(), state);
        }
        assert!("sent".parse::<RecipientState>().is_err());
    }
}
