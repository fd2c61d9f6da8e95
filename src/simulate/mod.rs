//! `connectflow simulate`: realistic, correctly signed Finicity Connect
//! webhooks sent to a receiver, exactly as Finicity would.

pub mod flows;
