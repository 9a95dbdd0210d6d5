//! Signed requests to the user's own servers, in the Standard Webhooks
//! format (<https://www.standardwebhooks.com>): today the `http` agent's
//! calls; the run webhooks of SPEC 13 will sign the same way.

pub mod signing;
