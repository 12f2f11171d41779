//! Minting, parsing, attenuating, inspecting and authorizing tokens.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{self, Binary, CheckKind, Op, Term};
use biscuit_auth::error::{Logic, Token as TokenError};
use biscuit_auth::{
    AuthorizerBuilder, AuthorizerLimits, Biscuit, BiscuitBuilder, BlockBuilder, UnverifiedBiscuit,
};

use crate::vocab::{Holder, Operation, Right, ScopeKind, validate_queue, validate_repo};
use crate::{GrantError, RootKey};

/// Largest token accepted, in bytes of its base64url text. Checked before any decoding, so an
/// oversized token costs nothing but its length. Real tokens are well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Most blocks a token may carry: its authority block and up to 15 attenuations.
pub const MAX_BLOCKS: usize = 16;

/// Most checks in one attenuation block, and alternatives (queries) in one check.
const MAX_CHECKS_PER_BLOCK: usize = 8;
const MAX_QUERIES_PER_CHECK: usize = 64;

/// What an attenuation check may ask about: the request's ambient facts, one of each.
const REQUEST_PREDICATES: [&str; 3] = ["resource", "operation", "time"];

/// Explicit Datalog run limits. Biscuit's default 1 ms budget fails intermittently on a loaded
/// machine; our tokens are tiny, so facts and iterations are the real bound and time is a
/// backstop.
fn run_limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(250),
    }
}

/// What a site grants, before it is a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantSpec {
    /// The issuing site (`site(...)`).
    pub site: String,
    /// Who may use it.
    pub holder: Holder,
    /// Rights granted.
    pub rights: BTreeSet<Right>,
    /// Repositories the repo-scoped rights cover.
    pub repos: BTreeSet<String>,
    /// Queues `queue:take` covers.
    pub queues: BTreeSet<String>,
    /// When it stops working; `None` only when asked for explicitly.
    pub expires_at: Option<SystemTime>,
    /// Good for one job: the site leases its holder one run, then revokes it when that run's
    /// lease ends (ephemeral runners).
    pub single_use: bool,
}

/// What a token allows, read back from it. `expires_at` is the earliest expiry of any block, so
/// it reflects attenuation; rights and scopes are the authority block's (attenuation checks can
/// narrow them further, which [`Inspection`] shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The issuing site.
    pub site: String,
    /// Who may use it.
    pub holder: Holder,
    /// Rights of the authority block.
    pub rights: BTreeSet<Right>,
    /// Repositories of the authority block.
    pub repos: BTreeSet<String>,
    /// Queues of the authority block.
    pub queues: BTreeSet<String>,
    /// Earliest expiry over all blocks.
    pub expires_at: Option<SystemTime>,
    /// Revocation id of every block, hex, authority first. Revoking any one kills the token and
    /// every token attenuated from it.
    pub revocation_ids: Vec<String>,
    /// How many attenuation blocks follow the authority block.
    pub attenuations: usize,
    /// Good for one job (the authority block says `single_use(true)`).
    pub single_use: bool,
}

impl Grant {
    /// Scopes of `kind` this grant names (empty for the site kind).
    pub fn scopes(&self, kind: ScopeKind) -> &BTreeSet<String> {
        static NONE: BTreeSet<String> = BTreeSet::new();
        match kind {
            ScopeKind::Repo => &self.repos,
            ScopeKind::Queue => &self.queues,
            ScopeKind::Site => &NONE,
        }
    }

    /// Whether the authority block covers `op` (attenuation not considered).
    fn covers(&self, op: &Operation) -> bool {
        match op.right.scope_kind() {
            ScopeKind::Site => op.resource == self.site,
            kind => {
                let scopes = self.scopes(kind);
                scopes.contains("*") || scopes.contains(&op.resource)
            }
        }
    }

    /// One human line: who may do what, where, until when.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for kind in [ScopeKind::Repo, ScopeKind::Queue, ScopeKind::Site] {
            let rights: Vec<&str> = self
                .rights
                .iter()
                .filter(|r| r.scope_kind() == kind)
                .map(|r| r.as_str())
                .collect();
            if rights.is_empty() {
                continue;
            }
            let scopes = self.scopes(kind);
            let scope = match kind {
                ScopeKind::Site => String::new(),
                _ if scopes.contains("*") => format!(" on every {}", kind.as_str()),
                _ => {
                    let names: Vec<&str> = scopes.iter().map(String::as_str).collect();
                    let plural = if names.len() == 1 { "" } else { "s" };
                    format!(" on {}{plural} {}", kind.as_str(), names.join(", "))
                }
            };
            parts.push(format!("{}{scope}", rights.join(", ")));
        }
        let until = match self.expires_at {
            Some(at) => format!("until {}", format_time(at)),
            None => "with no expiry".to_owned(),
        };
        let narrowed = match self.attenuations {
            0 => String::new(),
            1 => ", narrowed by 1 attenuation block".to_owned(),
            n => format!(", narrowed by {n} attenuation blocks"),
        };
        format!(
            "{} may {} at site {}, {until}{narrowed}",
            self.holder,
            parts.join("; "),
            self.site
        )
    }
}

/// Formats a time as RFC 3339 UTC to the second, as Biscuit prints dates.
pub fn format_time(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Mints a token for `spec`, signed with the site's root key. Returns the token text
/// (base64url) and what it grants.
pub fn mint(root: &RootKey, spec: &GrantSpec) -> Result<(String, Grant), GrantError> {
    validate_spec(spec)?;
    let mut b = BiscuitBuilder::new();
    let add = |b: BiscuitBuilder, name: &str, value: &str| {
        b.fact(builder::fact(name, &[builder::string(value)]))
            .map_err(datalog_error)
    };
    b = add(b, "site", &spec.site)?;
    b = add(b, "holder", &spec.holder.to_string())?;
    for right in &spec.rights {
        b = add(b, "right", right.as_str())?;
    }
    for repo in &spec.repos {
        b = add(b, "repo", repo)?;
    }
    for queue in &spec.queues {
        b = add(b, "queue", queue)?;
    }
    if spec.single_use {
        b = b
            .fact(builder::fact("single_use", &[builder::boolean(true)]))
            .map_err(datalog_error)?;
    }
    if let Some(at) = spec.expires_at {
        b = b
            .code_with_params(
                "check if time($time), $time <= {expiry}",
                HashMap::from([("expiry".to_owned(), builder::date(&at))]),
                HashMap::new(),
            )
            .map_err(datalog_error)?;
    }
    let biscuit = b.build(root.key_pair()).map_err(datalog_error)?;
    let text = biscuit.to_base64().map_err(datalog_error)?;
    let grant = grant_of(&Blocks::of_biscuit(&biscuit)?)?;
    Ok((text, grant))
}

fn validate_spec(spec: &GrantSpec) -> Result<(), GrantError> {
    let refuse = |reason: String| Err(GrantError::BadSpec(reason));
    if spec.rights.is_empty() {
        return refuse("a grant needs at least one --right".into());
    }
    for repo in &spec.repos {
        validate_repo(repo)?;
    }
    for queue in &spec.queues {
        validate_queue(queue)?;
    }
    for kind in [ScopeKind::Repo, ScopeKind::Queue] {
        let (flag, scopes) = match kind {
            ScopeKind::Repo => ("--repo", &spec.repos),
            _ => ("--queue", &spec.queues),
        };
        let rights: Vec<&str> = spec
            .rights
            .iter()
            .filter(|r| r.scope_kind() == kind)
            .map(|r| r.as_str())
            .collect();
        if !rights.is_empty() && scopes.is_empty() {
            return refuse(format!(
                "{} needs at least one {flag} (use {flag} '*' to cover every {})",
                rights.join(", "),
                kind.as_str()
            ));
        }
        if rights.is_empty() && !scopes.is_empty() {
            return refuse(format!(
                "{flag} given but no right is limited by {}s",
                kind.as_str()
            ));
        }
    }
    Ok(())
}

/// How to narrow a token: each field that is set becomes one check in a new block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attenuation {
    /// Allow queue-scoped operations only on these queues.
    pub queues: Vec<String>,
    /// Allow repo-scoped operations only on these repositories.
    pub repos: Vec<String>,
    /// Allow only these rights.
    pub rights: Vec<Right>,
    /// Stop working at this time (if earlier than the token's own expiry).
    pub expires_at: Option<SystemTime>,
}

/// A token parsed without its signature checked: enough to attenuate and inspect offline,
/// never to authorize.
#[derive(Clone, Debug)]
pub struct UnverifiedToken(UnverifiedBiscuit);

impl UnverifiedToken {
    /// Parses token text (surrounding whitespace ignored). Refuses oversized text before
    /// decoding it.
    pub fn parse(text: &str) -> Result<Self, GrantError> {
        let text = check_size(text)?;
        UnverifiedBiscuit::from_base64(text)
            .map(Self)
            .map_err(|e| GrantError::Malformed(describe_format_error(&e)))
    }

    /// Appends a block of checks. The result is a new token, no wider than this one.
    pub fn attenuate(&self, narrowing: &Attenuation) -> Result<String, GrantError> {
        let block = attenuation_block(narrowing)?;
        let token = self.0.append(block).map_err(datalog_error)?;
        token.to_base64().map_err(datalog_error)
    }

    /// Every block's Datalog and revocation id, plus what the token grants.
    pub fn inspect(&self) -> Result<Inspection, GrantError> {
        let blocks = Blocks::of_unverified(&self.0)?;
        let grant = grant_of(&blocks)?;
        Ok(Inspection {
            sources: blocks.sources,
            grant,
        })
    }
}

fn check_size(text: &str) -> Result<&str, GrantError> {
    if text.len() > MAX_TOKEN_BYTES {
        return Err(GrantError::TooLarge {
            len: text.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(GrantError::Malformed("the token is empty".into()));
    }
    Ok(text)
}

fn attenuation_block(narrowing: &Attenuation) -> Result<BlockBuilder, GrantError> {
    if narrowing.queues.is_empty()
        && narrowing.repos.is_empty()
        && narrowing.rights.is_empty()
        && narrowing.expires_at.is_none()
    {
        return Err(GrantError::BadSpec(
            "nothing to attenuate: give --queue, --repo, --right or --ttl".into(),
        ));
    }
    let mut block = BlockBuilder::new();
    for (kind, names) in [("queue", &narrowing.queues), ("repo", &narrowing.repos)] {
        if names.is_empty() {
            continue;
        }
        let mut params = HashMap::new();
        let mut alternatives = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if kind == "queue" {
                validate_queue(name)?;
            } else {
                validate_repo(name)?;
            }
            alternatives.push(format!("resource(\"{kind}\", {{n{i}}})"));
            params.insert(format!("n{i}"), builder::string(name));
        }
        alternatives.push(format!("resource($kind, $name), $kind != \"{kind}\""));
        block = block
            .code_with_params(
                format!("check if {}", alternatives.join(" or ")),
                params,
                HashMap::new(),
            )
            .map_err(datalog_error)?;
    }
    if !narrowing.rights.is_empty() {
        let mut params = HashMap::new();
        let mut alternatives = Vec::new();
        for (i, right) in narrowing.rights.iter().enumerate() {
            alternatives.push(format!("operation({{r{i}}})"));
            params.insert(format!("r{i}"), builder::string(right.as_str()));
        }
        block = block
            .code_with_params(
                format!("check if {}", alternatives.join(" or ")),
                params,
                HashMap::new(),
            )
            .map_err(datalog_error)?;
    }
    if let Some(at) = narrowing.expires_at {
        block = block
            .code_with_params(
                "check if time($time), $time <= {expiry}",
                HashMap::from([("expiry".to_owned(), builder::date(&at))]),
                HashMap::new(),
            )
            .map_err(datalog_error)?;
    }
    Ok(block)
}

/// A token's blocks, for `tinyci token inspect`.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// Datalog source of each block, authority first.
    pub sources: Vec<String>,
    /// What the token grants.
    pub grant: Grant,
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "summary: {}", self.grant.summary())?;
        for (i, source) in self.sources.iter().enumerate() {
            let role = if i == 0 {
                "authority, signed by the site"
            } else {
                "attenuation"
            };
            let id = self.grant.revocation_ids.get(i).map_or("?", String::as_str);
            writeln!(f, "block {i} ({role}), revocation id {id}:")?;
            for line in source.lines().filter(|l| !l.trim().is_empty()) {
                writeln!(f, "    {}", line.trim())?;
            }
        }
        Ok(())
    }
}

/// A token whose signature chain verified against this site's root key.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    biscuit: Biscuit,
    grant: Grant,
}

/// Who is asking, where, and when: the ambient facts of an authorization.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    /// The authorizing site's name.
    pub this_site: &'a str,
    /// Holder names of the connection's peer (`site:beta`, `runner:r1`, …).
    pub peer: &'a [String],
    /// Now.
    pub now: SystemTime,
}

/// Parses `text` and verifies its signatures against `root`. Refuses oversized text before
/// decoding; names the failure without echoing the token.
pub fn verify(text: &str, root: &RootKey) -> Result<VerifiedToken, GrantError> {
    let text = check_size(text)?;
    let biscuit = Biscuit::from_base64(text, root.key_pair().public()).map_err(|e| match e {
        TokenError::Format(biscuit_auth::error::Format::Signature(_)) => GrantError::BadSignature,
        TokenError::Format(biscuit_auth::error::Format::UnknownPublicKey) => {
            GrantError::BadSignature
        }
        other => GrantError::Malformed(describe_format_error(&other)),
    })?;
    if biscuit.block_count() > MAX_BLOCKS {
        return Err(GrantError::Malformed(format!(
            "the token has {} blocks; at most {MAX_BLOCKS} are accepted",
            biscuit.block_count()
        )));
    }
    if biscuit
        .external_public_keys()
        .iter()
        .any(std::option::Option::is_some)
    {
        return Err(GrantError::Malformed(
            "the token has a third-party block; none are accepted".into(),
        ));
    }
    let blocks = Blocks::of_biscuit(&biscuit)?;
    for (index, block) in blocks.parsed.iter().enumerate().skip(1) {
        check_attenuation_shape(index, block)?;
    }
    let grant = grant_of(&blocks)?;
    Ok(VerifiedToken { biscuit, grant })
}

/// Refuses an attenuation block that is not of the shape [`attenuation_block`] writes: `check
/// if` queries over the request's own facts (at most two, and two expressions), nothing else.
///
/// Why: anyone holding a token can append any Datalog to it without a key, and biscuit looks
/// at its time limit only between rule iterations and at its fact limit only after one: a
/// check joining a few hundred appended facts in five variables runs for hours, and a rule
/// derives facts by the billion first, on the thread that serves every connection. Checks over
/// the request's facts (one `resource`, one `operation`, one `time`) cost a bounded amount
/// whatever the holder writes, and can still only narrow: checks never add facts.
fn check_attenuation_shape(index: usize, block: &BlockBuilder) -> Result<(), GrantError> {
    let refuse = |what: String| {
        Err(GrantError::Malformed(format!(
            "block {index} is not an attenuation this site accepts: {what}"
        )))
    };
    if !block.facts.is_empty() || !block.rules.is_empty() {
        return refuse(format!(
            "it states {} fact(s) and {} rule(s); an attenuation only checks",
            block.facts.len(),
            block.rules.len()
        ));
    }
    if !block.scopes.is_empty() {
        return refuse("it trusts blocks beyond the authority block".into());
    }
    if block.checks.len() > MAX_CHECKS_PER_BLOCK {
        return refuse(format!(
            "it has {} checks; at most {MAX_CHECKS_PER_BLOCK} are accepted",
            block.checks.len()
        ));
    }
    for check in &block.checks {
        if check.kind != CheckKind::One {
            return refuse("only `check if` is accepted".into());
        }
        if check.queries.len() > MAX_QUERIES_PER_CHECK {
            return refuse(format!(
                "a check has {} alternatives; at most {MAX_QUERIES_PER_CHECK} are accepted",
                check.queries.len()
            ));
        }
        for query in &check.queries {
            if !query.scopes.is_empty() {
                return refuse("a check trusts blocks beyond the authority block".into());
            }
            if query.body.len() > 2 || query.expressions.len() > 2 {
                return refuse(
                    "a check joins more than two facts or tests more than two expressions".into(),
                );
            }
            if let Some(other) = query
                .body
                .iter()
                .find(|p| !REQUEST_PREDICATES.contains(&p.name.as_str()))
            {
                return refuse(format!(
                    "a check asks about `{}`; attenuations ask only about {}",
                    other.name,
                    REQUEST_PREDICATES.join(", ")
                ));
            }
            if query.expressions.iter().any(|e| e.ops.len() > 16) {
                return refuse("a check's expression is too long".into());
            }
        }
    }
    Ok(())
}

impl VerifiedToken {
    /// What the token grants.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// Decides whether the token allows `op` for the peer in `ctx` at `ctx.now`. On denial the
    /// error names the operation and the reason (missing right, out of scope, expired, narrowed
    /// by an attenuation block, wrong holder), never the token.
    pub fn authorize(&self, op: &Operation, ctx: &Context<'_>) -> Result<(), GrantError> {
        let mut b = AuthorizerBuilder::new()
            .code(authorizer_policies())
            .map_err(datalog_error)?;
        let fact = |name: &str, terms: &[Term]| builder::fact(name, terms);
        b = b
            .fact(fact("this_site", &[builder::string(ctx.this_site)]))
            .and_then(|b| b.fact(fact("time", &[builder::date(&ctx.now)])))
            .and_then(|b| b.fact(fact("operation", &[builder::string(op.right.as_str())])))
            .and_then(|b| {
                b.fact(fact(
                    "resource",
                    &[
                        builder::string(op.right.scope_kind().as_str()),
                        builder::string(&op.resource),
                    ],
                ))
            })
            .map_err(datalog_error)?;
        for name in ctx.peer {
            b = b
                .fact(fact("peer", &[builder::string(name)]))
                .map_err(datalog_error)?;
        }
        let mut authorizer = b
            .set_limits(run_limits())
            .build(&self.biscuit)
            .map_err(datalog_error)?;
        match authorizer.authorize_with_limits(run_limits()) {
            Ok(_) => Ok(()),
            Err(TokenError::FailedLogic(logic)) => Err(self.explain(op, ctx, &logic)),
            Err(TokenError::RunLimit(limit)) => Err(GrantError::Denied {
                operation: op.to_string(),
                reason: format!("authorization exceeded its limits ({limit})"),
            }),
            Err(other) => Err(GrantError::Denied {
                operation: op.to_string(),
                reason: other.to_string(),
            }),
        }
    }

    /// Turns Biscuit's verdict into a reason a person can act on.
    fn explain(&self, op: &Operation, ctx: &Context<'_>, logic: &Logic) -> GrantError {
        let grant = &self.grant;
        let operation = op.to_string();
        if let Some(at) = grant.expires_at
            && at < ctx.now
        {
            return GrantError::Expired {
                at: format_time(at),
            };
        }
        if grant.site != ctx.this_site {
            return GrantError::Denied {
                operation,
                reason: format!("the grant was issued for site {}", grant.site),
            };
        }
        if !ctx.peer.contains(&grant.holder.to_string()) {
            return GrantError::WrongHolder {
                holder: grant.holder.to_string(),
            };
        }
        if !grant.rights.contains(&op.right) {
            let has: Vec<&str> = grant.rights.iter().map(|r| r.as_str()).collect();
            return GrantError::Denied {
                operation,
                reason: format!(
                    "the grant has no {} right (it has {})",
                    op.right,
                    has.join(", ")
                ),
            };
        }
        if !grant.covers(op) {
            let kind = op.right.scope_kind().as_str();
            let scopes: Vec<&str> = grant
                .scopes(op.right.scope_kind())
                .iter()
                .map(String::as_str)
                .collect();
            return GrantError::Denied {
                operation,
                reason: format!("{} is limited to {kind} {}", op.right, scopes.join(", ")),
            };
        }
        let failed_block_check = match logic {
            Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks } => {
                checks.iter().find_map(|c| match c {
                    biscuit_auth::error::FailedCheck::Block(block) if block.block_id > 0 => {
                        Some(block.clone())
                    }
                    _ => None,
                })
            }
            _ => None,
        };
        match failed_block_check {
            Some(check) => GrantError::Denied {
                operation,
                reason: format!(
                    "attenuation block {} does not allow it ({})",
                    check.block_id, check.rule
                ),
            },
            None => GrantError::Denied {
                operation,
                reason: logic.to_string(),
            },
        }
    }
}

/// The site's policies. Authorizer rules see only the authority block and the authorizer's own
/// facts (Biscuit's default scope), so facts an attenuation block adds cannot satisfy them.
fn authorizer_policies() -> String {
    let mut code = String::new();
    for right in Right::ALL {
        code.push_str(&format!(
            "scope_of(\"{}\", \"{}\");\n",
            right.as_str(),
            right.scope_kind().as_str()
        ));
    }
    code.push_str(
        r#"
granted("repo", $name) <- repo($name);
granted("queue", $name) <- queue($name);
granted("site", $name) <- site($name);
check if site($site), this_site($site);
allow if holder($holder), peer($holder), operation($op), right($op), scope_of($op, $kind), resource($kind, $name), granted($kind, $name);
allow if holder($holder), peer($holder), operation($op), right($op), scope_of($op, $kind), $kind != "site", resource($kind, $name), granted($kind, "*");
deny if true;
"#,
    );
    code
}

/// The blocks of a token as parsed Datalog, with their revocation ids.
struct Blocks {
    sources: Vec<String>,
    parsed: Vec<BlockBuilder>,
    revocation_ids: Vec<String>,
}

impl Blocks {
    fn of_biscuit(token: &Biscuit) -> Result<Self, GrantError> {
        let sources = (0..token.block_count())
            .map(|i| token.print_block_source(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(datalog_error)?;
        Self::new(sources, token.revocation_identifiers())
    }

    fn of_unverified(token: &UnverifiedBiscuit) -> Result<Self, GrantError> {
        let sources = (0..token.block_count())
            .map(|i| token.print_block_source(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(datalog_error)?;
        Self::new(sources, token.revocation_identifiers())
    }

    fn new(sources: Vec<String>, ids: Vec<Vec<u8>>) -> Result<Self, GrantError> {
        let parsed = sources
            .iter()
            .map(|source| BlockBuilder::new().code(source))
            .collect::<Result<Vec<_>, _>>()
            .map_err(datalog_error)?;
        Ok(Self {
            sources,
            parsed,
            revocation_ids: ids.iter().map(hex::encode).collect(),
        })
    }
}

/// Reads the grant out of the authority block, and the earliest expiry out of every block.
fn grant_of(blocks: &Blocks) -> Result<Grant, GrantError> {
    let authority = blocks
        .parsed
        .first()
        .ok_or_else(|| GrantError::Malformed("the token has no authority block".into()))?;
    let strings = |name: &str| -> BTreeSet<String> {
        authority
            .facts
            .iter()
            .filter(|f| f.predicate.name == name)
            .filter_map(|f| match f.predicate.terms.as_slice() {
                [Term::Str(s)] => Some(s.clone()),
                _ => None,
            })
            .collect()
    };
    let not_ours = |what: &str| {
        GrantError::Malformed(format!(
            "the authority block has {what}: not a tinyci grant"
        ))
    };
    let mut sites = strings("site").into_iter();
    let site = sites.next().ok_or_else(|| not_ours("no site"))?;
    if sites.next().is_some() {
        return Err(not_ours("several sites"));
    }
    let mut holders = strings("holder").into_iter();
    let holder: Holder = holders
        .next()
        .ok_or_else(|| not_ours("no holder"))?
        .parse()?;
    if holders.next().is_some() {
        return Err(not_ours("several holders"));
    }
    let rights = strings("right")
        .iter()
        .map(|r| r.parse())
        .collect::<Result<BTreeSet<Right>, _>>()?;
    let expires_at = blocks
        .parsed
        .iter()
        .flat_map(|block| block.checks.iter())
        .flat_map(|check| check.queries.iter())
        .flat_map(|rule| rule.expressions.iter())
        .filter_map(|expr| upper_time_bound(&expr.ops))
        .min();
    Ok(Grant {
        site,
        holder,
        rights,
        repos: strings("repo"),
        queues: strings("queue"),
        expires_at,
        revocation_ids: blocks.revocation_ids.clone(),
        attenuations: blocks.parsed.len().saturating_sub(1),
        single_use: authority
            .facts
            .iter()
            .any(|f| f.predicate.name == "single_use"),
    })
}

/// `$var <= date` or `$var < date`: an expiry. Other uses of dates are still enforced at every
/// authorization; they just do not shorten the lifetime of capabilities handed out earlier.
fn upper_time_bound(ops: &[Op]) -> Option<SystemTime> {
    match ops {
        [
            Op::Value(Term::Variable(_)),
            Op::Value(Term::Date(secs)),
            Op::Binary(Binary::LessOrEqual | Binary::LessThan),
        ] => Some(UNIX_EPOCH + Duration::from_secs(*secs)),
        _ => None,
    }
}

fn datalog_error(e: TokenError) -> GrantError {
    GrantError::Datalog(e.to_string())
}

fn describe_format_error(e: &TokenError) -> String {
    match e {
        TokenError::Base64(_) => "not base64url token text".to_owned(),
        TokenError::Format(format) => format!("not a Biscuit token ({format})"),
        other => other.to_string(),
    }
}
