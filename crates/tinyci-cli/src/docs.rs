//! `tinyci completions SHELL` and `tinyci man`: generated from the same command definition
//! that parses the arguments, so they cannot drift from it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

/// Print shell completions for SHELL on standard output.
///
/// bash: `tinyci completions bash > ~/.local/share/bash-completion/completions/tinyci`;
/// zsh: `tinyci completions zsh > "${fpath[1]}/_tinyci"`;
/// fish: `tinyci completions fish > ~/.config/fish/completions/tinyci.fish`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Write the manual pages: tinyci.1 and one per subcommand (tinyci-site-up.1, …).
///
/// Example: `tinyci man --out /usr/local/share/man/man1`, then `man tinyci-submit`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// The directory to write them to (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
}

pub(crate) fn completions(args: CompletionsArgs, mut command: clap::Command) -> Result<()> {
    use std::io::Write as _;
    // Into memory first: clap_complete panics on a failed write (`| head` closing the pipe);
    // a failed write of ours is an error like any other.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "tinyci", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("cannot write the completions to standard output")
}

pub(crate) fn man(args: ManArgs, command: clap::Command) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let pages = 1 + subcommands(&command);
    clap_mangen::generate_to(command, &args.out)
        .with_context(|| format!("cannot write the manual pages to {}", args.out.display()))?;
    eprintln!("wrote {pages} manual pages to {}", args.out.display());
    Ok(())
}

/// How many pages `command`'s subcommands get: every one clap_mangen writes (not hidden, not
/// clap's own `help`).
fn subcommands(command: &clap::Command) -> usize {
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .map(|sub| 1 + subcommands(sub))
        .sum()
}
