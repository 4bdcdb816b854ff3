//! The pure core: X-MSYS-API parsing, validation and the plan of a message.
//! No I/O, no async, no milter types, so it can be unit-tested and fuzzed.

pub mod copies;
pub mod header;
pub mod plan;
pub mod recipients;
pub mod reply;

pub use header::{SmtpApi, parse};
pub use plan::{HeaderEdit, MessageFacts, Plan, plan};
pub use reply::{Rejection, Reply};
