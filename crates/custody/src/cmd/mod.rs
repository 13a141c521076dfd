//! Subcommands of the `custody` binary, and the error reporting they share.

pub mod admin;
pub mod agent;
pub mod demo;
pub mod endpoints;
pub mod pki;
pub mod publish;
pub mod repo;
pub mod server;
pub mod tuf;

/// Exit code of a command that failed (README, "Exit codes").
pub const EXIT_FAILURE: u8 = 1;

/// A hint shown under an error: what the user can do about it.
#[derive(Debug)]
pub struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Hint {}

/// Prints an error with its whole cause chain, and the hint attached with [`anyhow::Context`] if there is one.
pub fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if let Some(hint) = err.downcast_ref::<Hint>() {
        eprintln!("hint: {hint}");
    }
}
