//! The `tinyci` command. Parses arguments, wires the libraries together, and turns their typed
//! errors into one readable message and a documented exit code. `anyhow` lives here only.

mod artifacts;
mod docs;
mod federation;
mod github;
mod gitsource;
mod grant;
mod jobs;
mod remote;
mod runner;
mod runner_metrics;
mod secret;
mod site;
mod termsafe;
mod util;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Shown on `--help` of every command: scripts tell "the code failed" from "tinyci failed".
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  could not reach the site, or it refused (or another operation failed: I/O error)
  2  bad command line
  3  bad configuration or input (site.toml, key files, existing identity)
  4  runs did not pass (failed, canceled, timed out or errored)";

/// tinyci: a capability-secured CI mesh.
///
/// Quick start: `tinyci site up` in an empty directory initializes a site named `local`
/// (certificates in ./certs, store in ./data) and serves it on 127.0.0.1:7433; then
/// `tinyci site status` talks to it with the admin certificate.
#[derive(Debug, Parser)]
#[command(name = "tinyci", version, max_term_width = 100)]
struct Cli {
    /// Log format for diagnostics on stderr (level from RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, run and inspect a site.
    #[command(subcommand)]
    Site(site::SiteCommand),
    /// Mint a grant (a Biscuit token) for a partner site, runner, admin or user.
    Grant(grant::GrantArgs),
    /// Narrow, inspect, revoke and list tokens.
    #[command(subcommand)]
    Token(grant::TokenCommand),
    /// Run a runner (`--bundle FILE`) or provision one (`runner add`).
    Runner(runner::RunnerArgs),
    /// Submit a local git checkout to run its tasks.
    Submit(jobs::SubmitArgs),
    /// Cancel a run or a submission.
    Cancel(jobs::CancelArgs),
    /// Follow a submission until it ends.
    Wait(jobs::WaitArgs),
    /// Print a run's log.
    Logs(jobs::LogsArgs),
    /// List a run's artifacts, or download one (--get NAME -o FILE).
    Artifacts(artifacts::ArtifactsArgs),
    /// Operate the site (runs, queues, runners, users, repositories) with the admin capability.
    #[command(subcommand)]
    Admin(jobs::AdminCommand),
    /// Sign in to a site with GitHub; writes a certificate and token for this machine.
    Login(github::LoginArgs),
    /// Set, list and remove job secrets (sealed at the site; delivered only to matching runs'
    /// leases, masked in their logs).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Pin, list and unpin partner sites.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
    /// List sites found over mDNS and static peers: own, pinned partner, or untrusted.
    Peers(federation::PeersArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Write the manual pages (tinyci.1 and one per subcommand).
    Man(docs::ManArgs),
}

fn main() -> ExitCode {
    let matches = cli_command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_tracing(cli.log_format, cli.command.default_log_level());
    let result = match cli.command {
        Command::Site(command) => site::run(command),
        Command::Grant(args) => grant::grant(args),
        Command::Token(command) => grant::token(command),
        Command::Runner(args) => runner::run(args),
        Command::Submit(args) => jobs::submit(args),
        Command::Cancel(args) => jobs::cancel(args),
        Command::Wait(args) => jobs::wait(args),
        Command::Logs(args) => jobs::logs(args),
        Command::Artifacts(args) => artifacts::artifacts(args),
        Command::Admin(command) => jobs::admin(command),
        Command::Login(args) => github::login(args),
        Command::Secret(command) => secret::secret(command),
        Command::Federation(command) => federation::federation(command),
        Command::Peers(args) => federation::peers(args),
        Command::Completions(args) => docs::completions(args, cli_command()),
        Command::Man(args) => docs::man(args, cli_command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit_code(&error))
        }
    }
}

impl Command {
    /// Long-running commands log progress by default; one-shot commands stay quiet.
    fn default_log_level(&self) -> &'static str {
        match self {
            Command::Site(site::SiteCommand::Up(_)) | Command::Runner(_) => "info",
            _ => "warn",
        }
    }
}

/// The whole command line as parsed, helped and documented: exit codes on every command,
/// the environment on the top one.
fn cli_command() -> clap::Command {
    with_exit_codes(Cli::command()).after_help(format!("{EXIT_CODES}\n\n{}", util::ENVIRONMENT))
}

/// Puts the exit codes on every command's and subcommand's `--help`.
fn with_exit_codes(command: clap::Command) -> clap::Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    names
        .iter()
        .fold(command.after_help(EXIT_CODES), |command, name| {
            command.mut_subcommand(name, with_exit_codes)
        })
}

/// Maps an error to the documented exit codes by what kind of error is at its root.
fn exit_code(error: &anyhow::Error) -> u8 {
    use tinyci_site::init::InitError;
    use tinyci_site::{IdentityError, SiteError};
    if error
        .chain()
        .any(|cause| cause.downcast_ref::<util::RunsDidNotPass>().is_some())
    {
        return 4;
    }
    if error
        .chain()
        .any(|cause| cause.downcast_ref::<util::UsageError>().is_some())
    {
        return 2;
    }
    for cause in error.chain() {
        if cause.downcast_ref::<tinyci_site::ConfigError>().is_some()
            || matches!(
                cause.downcast_ref::<InitError>(),
                Some(InitError::Exists { .. })
            )
            || cause
                .downcast_ref::<SiteError>()
                .is_some_and(SiteError::is_configuration)
            || cause
                .downcast_ref::<IdentityError>()
                .is_some_and(IdentityError::is_configuration)
            || cause.downcast_ref::<util::InputError>().is_some()
        {
            return 3;
        }
    }
    1
}

fn init_tracing(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && util::colour_wanted())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.compact().init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        // Catches clashing flags and bad defaults in every subcommand without running them.
        super::Cli::command().debug_assert();
    }

    #[test]
    fn every_command_lists_the_exit_codes_on_its_help() {
        fn check(command: &mut clap::Command, path: &str) {
            let help = command.render_long_help().to_string();
            assert!(
                help.contains("4  runs did not pass"),
                "{path} --help:\n{help}"
            );
            // `help` is clap's own, added as it parses.
            for sub in command
                .get_subcommands_mut()
                .filter(|sub| sub.get_name() != "help")
            {
                let path = format!("{path} {}", sub.get_name());
                check(sub, &path);
            }
        }
        check(&mut super::with_exit_codes(super::Cli::command()), "tinyci");
    }
}
