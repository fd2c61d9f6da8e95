//! Programs: one client's card program each, with its own Finicity partner
//! secrets, its own authorization period and its own customers. Without a
//! programs file there is one program, `default`.

mod id;

pub use id::{InvalidProgramId, ProgramId};
