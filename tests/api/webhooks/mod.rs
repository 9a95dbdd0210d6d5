//! SPEC 13, run webhooks: on one node, the URLs, the schedule, the
//! deliveries' API (`delivery.rs`); the Python receiver example verifying
//! and handling them (`receivers.rs`); a thousand at once (`load.rs`).

mod delivery;
mod load;
mod receivers;
