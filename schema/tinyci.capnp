# The tinyci wire contract: every capability a site hands out, and the structs they carry.
#
# A site exposes exactly one bootstrap capability, `Gateway`. Everything else is returned by
# a call after authorization: holding a reference *is* the permission, so no method below
# takes a token except `Gateway.redeem`. Capabilities handed out through a `Session` are bound
# to the scope they were authorized for and die when their token expires or is revoked.
#
# Evolution rules: append-only. Never renumber or retype a field or method; add new ones at
# the end with the next ordinal. Times are Unix epoch milliseconds (Int64) unless named
# otherwise; 0 means "not set". Identifiers (run, submission, runner) are opaque Text.

@0xaf1c3e8daa54b1a6;

# ---------------------------------------------------------------------------------------------
# Gateway and sessions
# ---------------------------------------------------------------------------------------------

interface Gateway {
  # The one bootstrap capability of a site. Built per connection and bound to the peer
  # identity taken from the connection's client certificate.

  info @0 () -> (info :SiteInfo);
  # Describes the site. Contains no secrets; any authenticated peer may call it, and clients
  # call it once after connecting to confirm the mTLS handshake was accepted.

  redeem @1 (token :Text) -> (session :Session);
  # Checks a Biscuit token (base64url): signature against this site's root key, expiry,
  # revocation, and holder binding against the connection's certificate identity. The only
  # place in the system where tokens are checked. Fails with an error saying what was wrong,
  # never echoing the token.
}

struct SiteInfo {
  # Public facts about a site.

  siteId @0 :Text;
  # The site's name, as in its certificates' `tinyci://<site>/site` URI.

  version @1 :Text;
  # The tinyci version the site runs (semver).

  caFingerprint @2 :Text;
  # SHA-256 of the site CA certificate (DER), lowercase hex pairs joined by ':'.

  uptimeMillis @3 :UInt64;
  # Milliseconds since the site started serving.

  protocol @4 :UInt32;
  # Wire protocol revision; bumped when a change needs clients to know.

  peer @5 :Text;
  # The identity this connection was authenticated as (`tinyci://<site>/<role>/<name>`), so a
  # client can see how the site sees it.
}

struct GrantInfo {
  # What a redeemed token allows, in plain terms. Derived from the token; never the token.

  holder @0 :Text;
  # Who may use it (`site:beta`, `runner:r1`, `user:ana`, `admin:ana`), empty for a bearer grant.

  rights @1 :List(Text);
  # Rights such as `queue:submit`, `queue:take`, `logs:read`, `logs:write`, `assets:read`, `admin`.

  repos @2 :List(Text);
  # Repositories the rights are limited to; empty means not limited by repository.

  queues @3 :List(Text);
  # Queues the rights are limited to; empty means not limited by queue.

  expiresAt @4 :Int64;
  # When the grant stops working (epoch ms); 0 for a grant without expiry.

  revocationIds @5 :List(Text);
  # Revocation identifiers of every block of the token, hex; revoking any of them kills it.

  summary @6 :Text;
  # One human line, e.g. "runner:r1 may take jobs from queue gpu until 2026-12-01 10:00Z".
}

struct RunnerInfo {
  # How a runner describes itself when it asks for a Worker.

  name @0 :Text;
  # The runner's name; must match the name in its certificate identity.

  hostname @1 :Text;
  # The host it runs on, for operators.

  version @2 :Text;
  # The tinyci version the runner runs.

  executors @3 :List(Text);
  # Executors it offers: `shell` (processes on the host), `sandbox` (bubblewrap namespaces),
  # `docker` (containers). The site leases it only runs whose isolation one of them provides.

  slots @4 :UInt32;
  # How many runs it executes concurrently.

  allowPrivileged @5 :Bool;
  # Started with `--allow-privileged`: it runs privileged containers when the site's policy
  # grants one. Without it, it is never leased a privileged run.

  labels @6 :List(Text);
  # Operator-given labels (`tinyci runner --label gpu`): a run whose task files list
  # `labels:` is leased only to a runner that has every one of them.
}

struct LogScope {
  # What a log reader is asked for.

  repo @0 :Text;
  # Repository whose runs may be read (`org/x`).
}

interface Session {
  # What a redeemed token became. Each method returns a capability bound to exactly the scope
  # asked for, or fails naming the missing right and scope.

  grant @0 () -> (grant :GrantInfo);
  # Describes what this session may do.

  submitter @1 (repo :Text) -> (submitter :Submitter);
  # Needs `queue:submit` on `repo`.

  worker @2 (queue :Text, runner :RunnerInfo) -> (worker :Worker);
  # Needs `queue:take` on `queue`. One Worker per runner process and queue.

  logs @3 (scope :LogScope) -> (reader :LogReader);
  # Needs `logs:read` on the scope's repository.

  admin @4 () -> (admin :Admin);
  # Needs `admin`.

  users @5 () -> (users :UserDirectory);
  # Needs `users:modify` (a site user: the `modify:user` capability, held now).

  repos @6 () -> (repos :RepoSettings);
  # Needs `repos:modify` (a site user: the `modify:ci` capability, held now; they enable
  # repositories with their own GitHub account only).

  secrets @7 (repo :Text) -> (secrets :SecretStore);
  # Needs `secrets:manage` on `repo` (a site user: the `secrets` capability, and GitHub's
  # admin permission on the repository). `*` scopes it to every repository the grant covers.
}

interface SecretStore {
  # Job secrets of one repository (or every one, for `*`). Values go in and never come out:
  # only `Job.secrets` of a matching lease returns them.

  set @0 (repo :Text, name :Text, refPattern :Text, tiers :List(Text), asFile :Bool, value :Data) -> (secret :SecretInfo);
  # Creates or replaces a secret. Refused: a value under 6 or over 65536 bytes, a name that
  # is not `[A-Z_][A-Z0-9_]*` (or is tinyci's own), an unknown tier, a repository outside
  # the scope, or a 101st secret of one repository.

  list @1 () -> (secrets :List(SecretInfo));
  # Every secret in scope; never a value.

  remove @2 (repo :Text, name :Text) -> (secret :SecretInfo);
  # Deletes a secret: no lease gets it from now on, and running jobs that had it are told
  # to delete its file (`JobControl.withdrawSecrets`).
}

struct SecretInfo {
  # A secret's description, never its value.

  repo @0 :Text;
  name @1 :Text;
  refPattern @2 :Text;
  # Refs it is for (`*`, `main`, `release/*`, `refs/heads/main`).
  tiers @3 :List(Text);
  # Trust tiers it is for (`local`, `repo`, `fork`, `partner`, `partner:NAME`).
  asFile @4 :Bool;
  # Delivered as a file in `$TINYCI_SECRETS_DIR` rather than a variable.
  setBy @5 :Text;
  # The verified identity that set it.
  setAt @6 :Int64;
  # Unix milliseconds.
}

struct JobSecret {
  # A secret as delivered to a lease.

  name @0 :Text;
  value @1 :Data;
  asFile @2 :Bool;
}

struct SecretDeliveryInfo {
  # One delivery of a secret to a lease.

  name @0 :Text;
  attempt @1 :UInt32;
  runner @2 :Text;
  # The runner's verified identity.
  at @3 :Int64;
  # Unix milliseconds.
}

interface UserDirectory {
  # Site users, for holders of `users:modify` who are not the site's admins.

  list @0 () -> (users :List(UserInfo));
  # Every site user.

  add @1 (name :Text, capabilities :List(Text)) -> (user :UserInfo);
  # As `Admin.addUser`.

  setCapability @2 (name :Text, capability :Text, granted :Bool) -> (user :UserInfo);
  # As `Admin.setUserCapability`.
}

interface RepoSettings {
  # GitHub repositories, for holders of `repos:modify` who are not the site's admins.

  list @0 () -> (repos :List(RepoInfo));
  # Known repositories.

  enable @1 (name :Text, githubUser :Text, public :Bool) -> (repo :RepoInfo);
  # As `Admin.enableRepo`; a site user may only name themselves as `githubUser`.

  disable @2 (name :Text) -> (repo :RepoInfo);
  # As `Admin.disableRepo`.
}

interface Handle {
  # A subscription or other held resource. Dropping the last reference releases it; there is
  # nothing to call.
}

# ---------------------------------------------------------------------------------------------
# Bytes
# ---------------------------------------------------------------------------------------------

interface ByteSink {
  # A flow-controlled sink of bytes, used for source archives and artifacts in both
  # directions: whoever produces the bytes writes into a sink the consumer handed over.

  write @0 (chunk :Data) -> stream;
  # Appends a chunk (at most 64 KiB). Streaming: the caller keeps a bounded window in flight.

  finish @1 (sha256 :Data) -> (size :UInt64);
  # Ends the transfer. The receiver checks the SHA-256 the writer computed against what it
  # received and fails on a mismatch; returns the byte count it stored.
}

# ---------------------------------------------------------------------------------------------
# Submitting
# ---------------------------------------------------------------------------------------------

struct SubmitRequest {
  # One submission of a repository at some revision.

  ref @0 :Text;
  # The branch or tag (`refs/heads/main`), used for auto-cancel of superseded runs.

  sha @1 :Text;
  # Commit id of the head revision, hex.

  baseSha @2 :Text;
  # Commit id to diff against for task selection; empty means the default branch's head.

  all @3 :Bool;
  # Select every task instead of selecting by diff.

  sourceSha256 @4 :Data;
  # The source archive uploaded with `Submitter.upload`, named by its SHA-256; empty when the
  # site fetches the source itself (GitHub).

  changedPaths @5 :List(Text);
  # Paths changed between base and head, as computed by the submitter when it holds the
  # checkout; the site computes them itself when it fetches the source.

  title @6 :Text;
  # A human title (commit subject or PR title).
}

interface Submitter {
  # Submits work for one repository (the one it was authorized for).

  upload @0 () -> (sink :ByteSink);
  # Starts uploading a source archive (tar). After `finish`, pass its SHA-256 in
  # `SubmitRequest.sourceSha256`.

  submit @1 (request :SubmitRequest) -> (ticket :Ticket);
  # Creates a submission, its tasks and runs. Returns only after it is durable.

  ticket @2 (submissionId :Text) -> (ticket :Ticket);
  # Re-opens a submission of this repository (e.g. to cancel it later).
}

interface Ticket {
  # One submission.

  submission @0 () -> (submission :SubmissionInfo);
  # The submission and its current status.

  runs @1 () -> (runs :List(RunInfo));
  # Every run of the submission with its current status.

  cancel @2 (reason :Text) -> ();
  # Cancels every unfinished run of the submission; holders are told through JobControl.

  watch @3 (observer :RunObserver) -> (handle :Handle);
  # Pushes every run's state change to `observer` until the submission ends or the handle is
  # dropped. Starts with the current state of every run.

  cancelRun @4 (run :Text, reason :Text) -> ();
  # Cancels one unfinished run of this submission. Needs `runs:cancel`, as `cancel` does.

  retryRun @5 (run :Text) -> (run :RunInfo);
  # Runs a finished run of this submission again (a new submission of that one run, on the
  # same source and tier, superseding nothing). Needs `runs:cancel`.
}

interface RunObserver {
  # Receives run state changes pushed by the site.

  changed @0 (run :RunInfo) -> stream;
  # A run changed state.

  ended @1 (submission :SubmissionInfo) -> ();
  # Every run reached a final state.
}

enum RunStatus {
  # The run state machine.
  queued @0;    # waiting in its queue
  leased @1;    # handed to a runner, not yet started
  running @2;   # the runner reported it started
  passed @3;    # command exited 0
  failed @4;    # command exited non-zero
  canceled @5;  # canceled by a user, a superseding submission, or a closed PR
  timedOut @6;  # killed at its timeout
  errored @7;   # could not run (bad image, too many lost leases, internal error)
}

struct SubmissionInfo {
  # A submission and its aggregate status.

  id @0 :Text;
  # Submission id.

  repo @1 :Text;
  # Repository (`org/x`).

  ref @2 :Text;
  # Branch or tag.

  sha @3 :Text;
  # Head commit.

  status @4 :RunStatus;
  # Aggregate: the worst final status of its runs once all ended, else queued or running.

  createdAt @5 :Int64;
  # When it was accepted (epoch ms).

  submittedBy @6 :Text;
  # Identity of the submitter.

  runCount @7 :UInt32;
  # How many runs it expanded to.

  tier @8 :Text;
  # Where it came from, as the site established it: `local`, `repo`, `fork` or
  # `partner:<site>`.
}

struct RunInfo {
  # One run: a command of a task, on a queue.

  id @0 :Text;
  # Run id.

  submissionId @1 :Text;
  # The submission it belongs to.

  repo @2 :Text;
  # Repository.

  task @3 :Text;
  # Task directory relative to the repository root (`.` for the root task).

  name @4 :Text;
  # Run name from `task.yml`.

  queue @5 :Text;
  # Queue it runs on.

  status @6 :RunStatus;
  # Current status.

  attempt @7 :UInt32;
  # Delivery attempt, starting at 1; grows when a lease is lost.

  runner @8 :Text;
  # Runner holding or last holding it.

  exitCode @9 :Int32;
  # Exit code once finished (-1 if none).

  createdAt @10 :Int64;
  # When it was queued.

  startedAt @11 :Int64;
  # When a runner started it (0 if not yet).

  finishedAt @12 :Int64;
  # When it reached a final state (0 if not yet).

  message @13 :Text;
  # Why it ended as it did, for humans ("exit code 2", "timed out after 600s").

  ref @14 :Text;
  # Branch or tag of its submission.

  tier @15 :Text;
  # Its submission's trust tier (see `SubmissionInfo.tier`).

  waiting @16 :Text;
  # For a queued run that no connected runner may take (or whose queue is paused): why, e.g.
  # "waiting for a runner with sandbox or container isolation on queue default (fork work;
  # connected: local (host))". Empty otherwise.
}

# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

interface Worker {
  # Takes jobs from one queue for one runner.

  next @0 (control :JobControl) -> (job :Job);
  # Resolves when a run is leased to this worker: push, not poll. The site calls `control`
  # to cancel the run. Several `next` calls may be outstanding (one per free slot).

  resume @1 (run :Text, attempt :UInt32, control :JobControl) -> (job :Job);
  # Takes back a run this runner was executing when its connection was lost (or the site
  # restarted): its lease (`attempt`) is renewed and `control` replaces the old one. Fails if
  # the lease was lost meanwhile; the runner must then stop the run.
}

interface JobControl {
  # Implemented by the runner; the site calls it back.

  cancel @0 (reason :Text) -> ();
  # Stop the run now: shell gets SIGTERM to the process group then SIGKILL after a grace
  # period; docker gets stop then kill.

  withdrawSecrets @1 (run :Text, attempt :UInt32, names :List(Text)) -> ();
  # These secrets were removed: delete their files from that run's (`r-N`, this attempt)
  # secrets directory now. A withdrawal for another run or attempt is ignored.
}

struct KeyValue {
  # An environment variable or metadata entry.
  key @0 :Text;    # name
  value @1 :Text;  # value
}

struct JobSpec {
  # Everything a runner needs to execute one run. Carries no repository credentials.

  run @0 :RunInfo;
  # The run being executed.

  sha @1 :Text;
  # Commit to run.

  command @2 :List(Text);
  # argv; for the shell executor a single element is run by `sh -c`.

  image @3 :Text;
  # Container image for the docker executor.

  mountpoint @4 :Text;
  # Where the source tree is mounted inside the container.

  workdir @5 :Text;
  # Working directory, relative to the source root or absolute inside the container.

  env @6 :List(KeyValue);
  # Environment variables.

  timeoutSeconds @7 :UInt32;
  # Kill the run after this long.

  privileged @8 :Bool;
  # Run the container privileged: set only when the site's policy grants it for this queue,
  # repository and tier (the submitted task files can only ask).

  metadata @9 :List(KeyValue);
  # Free-form metadata from the task files.

  artifacts @10 :List(Text);
  # Paths or globs, relative to the workdir, to collect after the run.

  leaseExpiresAt @11 :Int64;
  # When the lease expires unless heartbeated.

  tier @12 :Text;
  # The run's trust tier.

  isolation @13 :Text;
  # The least isolation the runner must run it in (`host`, `sandbox`, `container`), from the
  # site's policy for its queue and tier. A runner that cannot must fail the run, never
  # run it with less.

  network @14 :Bool;
  # Whether the run may reach the network; otherwise it gets a network namespace of its own
  # with loopback only.

  cpu @15 :Text;
  # The task's `resources.cpu` (cores, e.g. `2`, `0.5`, `500m`); empty for the runner's
  # default. Containers are limited to it.

  memory @16 :Text;
  # The task's `resources.memory` (`512m`, `2g`, `1Gi`); empty for the runner's default.
  # Containers are limited to it.

  pull @17 :Text;
  # When to pull the image (`always`, `missing`, `never`) as the queue's site policy says;
  # empty leaves it to the runner's own policy.
}

struct Outcome {
  # How a run ended, as reported by its runner.

  status @0 :RunStatus;
  # passed, failed, canceled, timedOut or errored.

  exitCode @1 :Int32;
  # The command's exit code, -1 if it had none.

  message @2 :Text;
  # Human explanation.
}

interface Job {
  # One leased run. Released (see `release`) or completed, its lease ends.

  spec @0 () -> (spec :JobSpec);
  # What to run.

  source @1 (sink :ByteSink) -> ();
  # Streams the source tree archive (tar) into the runner's sink, then calls `finish`.

  log @2 () -> (sink :LogSink);
  # Where to stream the run's output.

  artifacts @3 () -> (sink :AssetSink);
  # Where to upload collected artifacts.

  heartbeat @4 () -> (leaseExpiresAt :Int64);
  # Extends the lease; fails once the lease is lost (the runner must then stop).

  started @5 () -> ();
  # The command started (moves the run from leased to running).

  complete @6 (outcome :Outcome) -> ();
  # Records the final outcome. Idempotent per lease: repeating it is harmless.

  release @7 () -> ();
  # Gives the lease back now (the runner is shutting down): the run is requeued at once. A
  # `Job` dropped before `started` is released too; one dropped after it (a lost connection)
  # keeps its lease until it expires, so its runner can `Worker.resume` it.

  secrets @8 () -> (secrets :List(JobSecret));
  # The secrets whose scope matches this run's repository, ref and trust tier, now; each
  # delivery is recorded. Needs the lease: a revoked grant or a lost lease gets nothing.
}

# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------

enum LogStream {
  # Which stream a chunk came from.
  stdout @0;  # the command's standard output
  stderr @1;  # the command's standard error
  system @2;  # lines written by tinyci itself (start, truncation, exit)
}

struct LogChunk {
  # A piece of a run's log.

  offset @0 :UInt64;
  # Byte offset of `data` in the run's log.

  stream @1 :LogStream;
  # Stream it came from.

  timestampMicros @2 :Int64;
  # When the runner read it (epoch microseconds).

  data @3 :Data;
  # At most 64 KiB.
}

interface LogSink {
  # Writes one run's log. Obtained from `Job.log`.

  write @0 (chunk :LogChunk) -> stream;
  # Appends a chunk whose offset must equal the acknowledged length; a chunk that was already
  # stored (after a reconnect) is skipped, one beyond a gap is refused.

  acknowledged @1 () -> (offset :UInt64);
  # Bytes durably stored so far: where a reconnecting runner resumes.

  close @2 () -> ();
  # No more output will come.
}

interface LogReader {
  # Reads logs of the runs of one repository.

  read @0 (run :Text, from :UInt64, max :UInt32) -> (chunks :List(LogChunk), done :Bool, status :RunStatus);
  # Up to `max` bytes from offset `from`; `done` once the run ended and everything was read.

  follow @1 (run :Text, from :UInt64, observer :LogObserver) -> (handle :Handle);
  # Backfill from `from`, then live chunks, then `observer.done`. Dropping the handle stops it.

  artifacts @2 (run :Text) -> (artifacts :List(ArtifactInfo));
  # Lists a run's artifacts.

  download @3 (run :Text, name :Text, sink :ByteSink) -> ();
  # Streams one artifact into `sink`. Needs `assets:read`.

  run @4 (id :Text) -> (run :RunInfo);
  # One run of this reader's repository, as it is now.

  ticket @5 (submissionId :Text) -> (ticket :Ticket);
  # A submission of this reader's repository, to follow (`tinyci wait`); its `cancel` and
  # `cancelRun` need `runs:cancel` (a site user: the `cancel` capability and GitHub's write
  # access to the repository).
}

interface LogObserver {
  # Implemented by a follower; the site pushes to it.

  chunk @0 (chunk :LogChunk) -> stream;
  # Next piece of the log.

  done @1 (status :RunStatus) -> ();
  # The run ended; no more chunks follow.
}

# ---------------------------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------------------------

struct ArtifactInfo {
  # A stored artifact of a run.
  name @0 :Text;     # path relative to the run's workdir
  size @1 :UInt64;   # bytes
  sha256 @2 :Data;   # content address
}

interface AssetSink {
  # Uploads the artifacts of one run. Obtained from `Job.artifacts`.

  put @0 (name :Text, size :UInt64) -> (sink :ByteSink);
  # Starts one artifact; names with `..` or absolute paths are refused, as are sizes over the
  # site's limit.
}

# ---------------------------------------------------------------------------------------------
# Administration
# ---------------------------------------------------------------------------------------------

struct SiteStatus {
  # The site's state for operators.
  info @0 :SiteInfo;          # public facts
  runnersConnected @1 :UInt32; # runners holding a Worker
  runsQueued @2 :UInt32;       # runs waiting in all queues
  runsActive @3 :UInt32;       # runs leased or running
}

struct QueueInfo {
  # One named queue.
  name @0 :Text;         # queue name
  depth @1 :UInt32;      # runs waiting
  leased @2 :UInt32;     # runs leased or running
  paused @3 :Bool;       # paused queues lease nothing
  groups @4 :List(GroupShare);
  # Submitter groups with runs here: leases go out in proportion to their weights.
}

struct GroupShare {
  # One submitter group (a trust tier: local, repo, fork, partner:NAME) on one queue.
  group @0 :Text;        # the group
  weight @1 :UInt32;     # its weight (`[queues.NAME] shares`; 1 unless named)
  queued @2 :UInt32;     # its runs waiting
  active @3 :UInt32;     # its runs leased or running
  leased @4 :UInt64;     # leases it got here since the site started
}

struct RunnerStatus {
  # One connected runner.
  info @0 :RunnerInfo;       # what it said about itself
  identity @1 :Text;         # its certificate identity
  queues @2 :List(Text);     # queues it takes from
  activeRuns @3 :List(Text); # runs it holds
  connectedAt @4 :Int64;     # when it connected
  draining @5 :Bool;         # finishing current runs, taking no new ones
  paused @6 :Bool;           # taking no new runs until resumed
  isolation @7 :Text;        # what the site credits it with, from its executors
}

struct RunFilter {
  # Which runs to list; empty fields do not filter.
  repo @0 :Text;            # repository
  ref @1 :Text;             # branch or tag
  status @2 :Text;          # a RunStatus name, empty for any
  limit @3 :UInt32;         # at most this many, newest first (0: site default)
}

struct IssuedGrant {
  # A token the site minted, as recorded (never the token itself).
  grant @0 :GrantInfo;      # what it allows
  issuedBy @1 :Text;        # who minted it
  issuedAt @2 :Int64;       # when
  revoked @3 :Bool;         # whether it was revoked
}

struct UserInfo {
  # A site user.
  name @0 :Text;                # user name
  github @1 :Text;              # linked GitHub login, empty if none
  capabilities @2 :List(Text);  # submit, cancel, modify:ci, modify:user, logs
}

struct RepoInfo {
  # A repository known to the site.
  name @0 :Text;        # `owner/name`
  enabled @1 :Bool;     # has a webhook and takes submissions
  public @2 :Bool;      # readable without login on the web pages
  hookId @3 :UInt64;    # GitHub's id of its webhook, 0 while disabled
  enabledBy @4 :Text;   # who last enabled or disabled it (peer identity)
  githubUser @5 :Text;  # the site user whose GitHub token the site uses for it; empty: the site's own
}

interface Admin {
  # Everything an operator does. Needs the `admin` right.

  status @0 () -> (status :SiteStatus);
  # Site status.

  runners @1 () -> (runners :List(RunnerStatus));
  # Connected runners.

  setRunner @2 (name :Text, drain :Bool, paused :Bool) -> ();
  # Drain, pause or resume a runner.

  queues @3 () -> (queues :List(QueueInfo));
  # Queues with depth.

  setQueue @4 (name :Text, paused :Bool) -> ();
  # Pause or resume a queue.

  runs @5 (filter :RunFilter) -> (runs :List(RunInfo));
  # Runs, newest first.

  cancel @6 (id :Text, reason :Text) -> (canceled :UInt32);
  # Cancels a run or every unfinished run of a submission; returns how many.

  retry @7 (runId :Text) -> (run :RunInfo);
  # Queues a finished run again as its next attempt: the same run id, attempt one more, its
  # log and artifacts taken over by the new attempt. Today's queue policy must admit it.

  grants @8 () -> (grants :List(IssuedGrant));
  # Issued grants.

  revoke @9 (tokenOrId :Text) -> (revokedIds :List(Text));
  # Revokes a token (given whole) or one revocation id; live capabilities derived from it
  # stop working.

  users @10 () -> (users :List(UserInfo));
  # Site users.

  repos @11 () -> (repos :List(RepoInfo));
  # Known repositories.

  logs @12 (repo :Text) -> (reader :LogReader);
  # A log reader for any repository, for operators.

  submitter @13 (repo :Text) -> (submitter :Submitter);
  # A submitter for any repository, for operators.

  ticket @14 (submissionId :Text) -> (ticket :Ticket);
  # Any submission's ticket, for operators (to follow or cancel it).

  addUser @15 (name :Text, capabilities :List(Text)) -> (user :UserInfo);
  # Creates a site user with tinyCI's capabilities (submit, cancel, modify:ci, modify:user,
  # logs). Fails if the name is taken or a capability is unknown.

  setUserCapability @16 (name :Text, capability :Text, granted :Bool) -> (user :UserInfo);
  # Grants or takes away one capability. Taking one away revokes the user's login tokens at
  # once (their sessions end; the next login carries what they still hold); a granted one
  # arrives with the next login.

  enableRepo @17 (name :Text, githubUser :Text, public :Bool) -> (repo :RepoInfo);
  # Creates the repository's GitHub webhook (push and pull_request, JSON, a fresh random
  # secret) and starts turning its events into submissions. `githubUser` names the site user
  # whose linked GitHub token the site acts with; empty means the site's own token. Enabling
  # an enabled repository changes nothing and returns it.

  disableRepo @18 (name :Text) -> (repo :RepoInfo);
  # Deletes the webhook and stops acting on the repository's events.

  reloadFederation @19 () -> (partners :List(Text));
  # Re-reads the partner pins under `federation/`: handshakes follow them at once, and live
  # connections of partners no longer pinned are closed. Returns the partners now trusted.
  # Fails (changing nothing) if a pin is unreadable.

  run @20 (id :Text) -> (run :RunInfo);
  # One run, by id (`r-N`), as it is now.

  retryFailed @21 (submissionId :Text) -> (runs :List(RunInfo));
  # Retries (as `retry`) every run of a submission that failed, timed out or errored;
  # returns them as queued. Fails, retrying nothing, if there is none.

  secrets @22 (repo :Text) -> (secrets :SecretStore);
  # The job secrets of `repo` (`*`: every repository).

  secretDeliveries @23 (runId :Text) -> (deliveries :List(SecretDeliveryInfo));
  # Which secrets each attempt of a run was given, to which runner, when.
}
