//! Exit codes: who must act on an error decides the code.

use std::process::ExitCode;

use tidemark_core::Actor;

/// Invalid input: the user must change the spec, a flag or the data.
pub const USER: u8 = 2;
/// Something outside tidemark failed; retrying may help.
pub const EXTERNAL: u8 = 3;
/// A bug in tidemark.
pub const INTERNAL: u8 = 4;
/// `tidemark reconcile --fail-on-breach`: a metric missed its contract's accuracy target.
pub const CONTRACT_BREACHED: u8 = 5;

/// A missing or unreadable file named by the user is the user's to fix; other I/O failures are external.
fn io_actor(e: &std::io::Error) -> Actor {
    use std::io::ErrorKind::{InvalidInput, NotFound, PermissionDenied};
    if matches!(e.kind(), NotFound | PermissionDenied | InvalidInput) { Actor::User } else { Actor::External }
}

/// Prints the error chain and returns the exit code for its actor.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let actor = err
        .chain()
        .find_map(|e| {
            e.downcast_ref::<tidemark_core::Error>()
                .map(tidemark_core::Error::actor)
                .or_else(|| e.downcast_ref::<tidemark_batch::Error>().map(tidemark_batch::Error::actor))
                .or_else(|| e.downcast_ref::<tidemark_store::Error>().map(tidemark_store::Error::actor))
                .or_else(|| e.downcast_ref::<tidemark_stream::Error>().map(tidemark_stream::Error::actor))
                .or_else(|| e.downcast_ref::<tidemark_reconcile::Error>().map(tidemark_reconcile::Error::actor))
                .or_else(|| e.downcast_ref::<crate::cmd::UsageError>().map(|_| Actor::User))
        })
        .or_else(|| err.chain().find_map(|e| e.downcast_ref::<std::io::Error>().map(io_actor)))
        .unwrap_or(Actor::Internal);
    eprintln!("error: {err:#}");
    let (code, hint) = match actor {
        Actor::User => (USER, None),
        Actor::External => (EXTERNAL, Some("this may be temporary; retrying can help")),
        Actor::Internal => (INTERNAL, Some("this is a bug in tidemark; please report it with the output above")),
    };
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(code)
}
