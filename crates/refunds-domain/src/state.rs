//! The projection of one refund: a join over the set of its distinct events.
//!
//! Every part of [`RefundState`] is a max- or min-register keyed by the
//! event's (occurred_at, event_id) (the status by (rank, occurred_at,
//! event_id)), so [`merge`] is commutative, associative and, per distinct
//! event, idempotent in effect: any order or batching of the same set of
//! events yields the same state, and the same bytes from [`RefundState::encode`].
//! Counting distinct events is the caller's job: merge must see each event once.

use std::sync::Arc;

use crate::event::{EventType, RefundEvent, TextField};
use crate::time::Timestamp;

/// Which event a value came from: compared as (occurred_at, event_id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub occurred_at: Timestamp,
    pub event_id: Arc<str>,
}

/// A value together with the version of the event that supplied it.
pub type Slot<T> = Option<(T, Version)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundState {
    pub tenant_id: String,
    pub id: String,
    /// The winning event: greatest (rank, occurred_at, event_id).
    pub status: EventType,
    pub status_version: Version,
    /// Smallest occurred_at among queued events.
    pub first_queued_at: Option<Timestamp>,
    /// Smallest occurred_at among all events.
    pub first_event_at: Timestamp,
    pub updated_at: Timestamp,
    pub event_count: u64,
    pub amount: Slot<u64>,
    pub currency: Slot<String>,
    pub original_amount: Slot<u64>,
    pub text: [Slot<String>; TextField::COUNT],
    pub initiated_by: Slot<String>,
    pub metadata: Slot<String>,
}

/// Folds one distinct event into a refund's state.
pub fn merge(state: Option<RefundState>, event: &RefundEvent) -> RefundState {
    let Some(mut state) = state else {
        return RefundState::first(event, Version::of(event));
    };
    let mut version = EventVersion { event, shared: None };
    if (event.kind.rank(), event.version()) > (state.status.rank(), state.status_version.key()) {
        state.status = event.kind;
        state.status_version = version.get();
    }
    if event.kind == EventType::Queued {
        state.first_queued_at = Some(state.first_queued_at.map_or(event.occurred_at, |t| t.min(event.occurred_at)));
    }
    state.first_event_at = state.first_event_at.min(event.occurred_at);
    state.updated_at = state.updated_at.max(event.occurred_at);
    state.event_count += 1;
    let fields = &event.fields;
    take(&mut state.amount, fields.amount.as_ref(), &mut version);
    take(&mut state.currency, fields.currency.as_ref(), &mut version);
    take(&mut state.original_amount, fields.original_amount.as_ref(), &mut version);
    for (slot, value) in state.text.iter_mut().zip(&fields.text) {
        take(slot, value.as_ref(), &mut version);
    }
    take(&mut state.initiated_by, fields.initiated_by.as_ref(), &mut version);
    take(&mut state.metadata, fields.metadata.as_ref(), &mut version);
    state
}

/// Folds several distinct events of one refund into its state: the same as
/// folding them with [`merge`] one by one in any order, but done newest
/// first (the slice is reordered), so that a field is copied once, from the
/// event that wins it, instead of once per event that carries it. `None`
/// only when there is neither a state nor an event.
pub fn merge_all(state: Option<RefundState>, events: &mut [&RefundEvent]) -> Option<RefundState> {
    events.sort_unstable_by(|a, b| b.version().cmp(&a.version()));
    events.iter().fold(state, |state, event| Some(merge(state, event)))
}

/// An event's [`Version`], built (the event id shared) only once the event
/// wins a slot: an event that wins nothing costs no allocation.
struct EventVersion<'e> {
    event: &'e RefundEvent,
    shared: Option<Version>,
}

impl EventVersion<'_> {
    fn beats(&self, current: &Version) -> bool {
        self.event.version() > current.key()
    }

    fn get(&mut self) -> Version {
        let event = self.event;
        self.shared.get_or_insert_with(|| Version::of(event)).clone()
    }
}

impl Version {
    fn of(event: &RefundEvent) -> Version {
        Version { occurred_at: event.occurred_at, event_id: Arc::from(event.event_id.as_str()) }
    }

    /// The order key, (occurred_at, event_id), borrowed.
    fn key(&self) -> (Timestamp, &str) {
        (self.occurred_at, &self.event_id)
    }
}

/// Last-writer-wins register: the value of the greatest version carrying one.
fn take<T: Clone>(slot: &mut Slot<T>, value: Option<&T>, version: &mut EventVersion<'_>) {
    let Some(value) = value else { return };
    if slot.as_ref().is_none_or(|(_, current)| version.beats(current)) {
        *slot = Some((value.clone(), version.get()));
    }
}

impl RefundState {
    fn first(event: &RefundEvent, version: Version) -> RefundState {
        let fields = &event.fields;
        let slot = |value: Option<&String>| value.map(|v| (v.clone(), version.clone()));
        RefundState {
            tenant_id: event.tenant_id.clone(),
            id: event.refund_id.clone(),
            status: event.kind,
            first_queued_at: (event.kind == EventType::Queued).then_some(event.occurred_at),
            first_event_at: event.occurred_at,
            updated_at: event.occurred_at,
            event_count: 1,
            amount: fields.amount.map(|v| (v, version.clone())),
            currency: slot(fields.currency.as_ref()),
            original_amount: fields.original_amount.map(|v| (v, version.clone())),
            text: std::array::from_fn(|i| slot(fields.text[i].as_ref())),
            initiated_by: slot(fields.initiated_by.as_ref()),
            metadata: slot(fields.metadata.as_ref()),
            status_version: version,
        }
    }

    /// created_at: the first queued event, or the first event of any type.
    pub fn created_at(&self) -> Timestamp {
        self.first_queued_at.unwrap_or(self.first_event_at)
    }

    /// The occurred_at of the winning event when it is of `kind`.
    pub fn terminal_at(&self, kind: EventType) -> Option<Timestamp> {
        (self.status == kind).then_some(self.status_version.occurred_at)
    }

    /// The versions of every filled field slot (with repeats).
    pub fn slot_versions(&self) -> impl Iterator<Item = &Version> {
        let numbers = [&self.amount, &self.original_amount].into_iter().flatten().map(|(_, v)| v);
        let strings = [&self.currency, &self.initiated_by, &self.metadata].into_iter().chain(&self.text);
        numbers.chain(strings.flatten().map(|(_, v)| v))
    }

    pub fn amount(&self) -> Option<u64> {
        self.amount.as_ref().map(|(v, _)| *v)
    }

    pub fn currency(&self) -> Option<&str> {
        self.currency.as_ref().map(|(v, _)| v.as_str())
    }

    pub fn text(&self, field: TextField) -> Option<&str> {
        self.text[field.index()].as_ref().map(|(v, _)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RefundFields;

    fn event(id: &str, kind: EventType, ms: i64) -> RefundEvent {
        RefundEvent {
            event_id: id.to_owned(),
            kind,
            occurred_at: Timestamp::from_millis(ms).unwrap(),
            refund_id: "ref_1".to_owned(),
            tenant_id: "org_1".to_owned(),
            fields: RefundFields::default(),
        }
    }

    fn fold(events: &[RefundEvent]) -> RefundState {
        events.iter().fold(None, |state, e| Some(merge(state, e))).unwrap()
    }

    #[test]
    fn late_processing_never_undoes_completed() {
        let state = fold(&[
            event("a", EventType::Queued, 1_000),
            event("c", EventType::Completed, 3_000),
            event("b", EventType::Processing, 5_000),
        ]);
        assert_eq!(state.status, EventType::Completed);
        assert_eq!(state.terminal_at(EventType::Completed).map(Timestamp::millis), Some(3_000));
        assert_eq!(state.updated_at.millis(), 5_000);
    }

    #[test]
    fn between_terminal_events_the_later_wins_whatever_the_arrival() {
        let completed = event("c", EventType::Completed, 3_000);
        let failed = event("f", EventType::Failed, 4_000);
        for order in [[completed.clone(), failed.clone()], [failed.clone(), completed.clone()]] {
            let state = fold(&order);
            assert_eq!(state.status, EventType::Failed);
            assert_eq!(state.terminal_at(EventType::Completed), None);
            assert_eq!(state.terminal_at(EventType::Failed).map(Timestamp::millis), Some(4_000));
        }
    }

    #[test]
    fn equal_timestamps_are_broken_by_event_id() {
        let a = event("evt_a", EventType::Cancelled, 3_000);
        let b = event("evt_b", EventType::Completed, 3_000);
        assert_eq!(fold(&[a.clone(), b.clone()]).status, EventType::Completed);
        assert_eq!(fold(&[b, a]).status, EventType::Completed);
    }

    #[test]
    fn created_at_prefers_queued_events_even_when_they_arrive_late() {
        let processing = event("p", EventType::Processing, 2_000);
        let state = fold(std::slice::from_ref(&processing));
        assert_eq!(state.created_at().millis(), 2_000);
        let state = merge(Some(state), &event("q", EventType::Queued, 2_500));
        assert_eq!(state.created_at().millis(), 2_500, "queued defines created_at once it exists");
        assert_eq!(state.first_event_at.millis(), 2_000);
    }

    #[test]
    fn fields_come_from_the_latest_event_carrying_them() {
        let mut queued = event("q", EventType::Queued, 1_000);
        queued.fields.amount = Some(2_500);
        queued.fields.text[TextField::OrderNo.index()] = Some("ORDER-1".to_owned());
        let mut completed = event("c", EventType::Completed, 2_000);
        completed.fields.amount = Some(2_400);
        for order in [[queued.clone(), completed.clone()], [completed.clone(), queued.clone()]] {
            let state = fold(&order);
            assert_eq!(state.amount(), Some(2_400));
            assert_eq!(state.text(TextField::OrderNo), Some("ORDER-1"), "null does not erase a value");
            assert_eq!(state.event_count, 2);
        }
    }
}
