//! Access settings of a rule: `quota` (budgets per identity, user or virtual key), just-in-time
//! approval (`action = "hold"`, or a DLP profile whose action is `approve`, with the
//! `approval_*` settings) and `record` (with `[defaults] recording_recipients`). The counting,
//! the waiting and the recording happen in the interception engine (ARCHITECTURE.md,
//! "Quotas", "Approvals", "Recordings").

use super::{Cx, span_of};
use crate::policy::{ApprovalPolicy, Defaults, Measure, QuotaLimit, QuotaPolicy, Window};
use crate::schema::{Action, DefaultsDef, QuotaBy, RecordMode, RuleAction, RuleDef};

/// Largest limit a quota takes (a larger one is a typo, not a budget).
pub const MAX_QUOTA: u64 = 1_000_000_000_000;
/// Default wait for a reviewer (seconds).
pub const DEFAULT_APPROVAL_TIMEOUT: u64 = 120;
/// Default most requests of one identity held at once.
pub const DEFAULT_MAX_HELD: u32 = 8;

impl Cx<'_> {
    /// The rule's quota, validated: an `inspect` rule (only inspected requests are counted),
    /// at least one limit, each from 1 to [`MAX_QUOTA`].
    pub(super) fn quota(&mut self, r: &RuleDef, name: &str, action: Action) -> Option<QuotaPolicy> {
        let q = r.quota.as_ref()?;
        if action != Action::Inspect {
            self.err(
                span_of(q),
                format!(
                    "`quota` applies only to `inspect` rules (only inspected requests and their \
                     tokens are counted); rule `{name}` is `{}`",
                    action.as_str()
                ),
            );
            return None;
        }
        let d = q.get_ref();
        if let Some(b) = &d.by
            && *b.get_ref() == QuotaBy::Key
            && r.broker_key.is_none()
        {
            self.err(
                span_of(b),
                format!(
                    "`by = \"key\"` counts virtual keys, which only a rule with `broker_key` \
                     reads; rule `{name}` has none"
                ),
            );
            return None;
        }
        let fields = [
            (&d.requests_per_minute, Measure::Requests, Window::Minute),
            (&d.requests_per_hour, Measure::Requests, Window::Hour),
            (&d.requests_per_day, Measure::Requests, Window::Day),
            (&d.tokens_per_minute, Measure::Tokens, Window::Minute),
            (&d.tokens_per_hour, Measure::Tokens, Window::Hour),
            (&d.tokens_per_day, Measure::Tokens, Window::Day),
        ];
        let mut limits = Vec::new();
        let mut ok = true;
        for (field, measure, window) in fields {
            let Some(v) = field else { continue };
            let max = *v.get_ref();
            if max == 0 || max > MAX_QUOTA {
                self.err(
                    span_of(v),
                    format!("a quota limit is from 1 to {MAX_QUOTA}; {max} is not (rule `{name}`)"),
                );
                ok = false;
            }
            limits.push(QuotaLimit { measure, window, max });
        }
        if limits.is_empty() {
            self.err(
                span_of(q),
                format!(
                    "rule `{name}`'s quota sets no limit: expected requests_per_minute, \
                     requests_per_hour, requests_per_day, tokens_per_minute, tokens_per_hour or \
                     tokens_per_day"
                ),
            );
            return None;
        }
        ok.then(|| QuotaPolicy {
            by: d.by.as_ref().map_or(QuotaBy::User, |b| *b.get_ref()),
            limits,
        })
    }
}

impl Cx<'_> {
    /// The rule's approval policy: every request of a `hold` rule, or the findings of a DLP
    /// profile that approves; the `approval_*` settings only where something waits.
    pub(super) fn approval(
        &mut self,
        r: &RuleDef,
        name: &str,
        written: RuleAction,
        approves: bool,
    ) -> Option<ApprovalPolicy> {
        let waits = written == RuleAction::Hold || approves;
        let settings = [
            ("approval_timeout", r.approval_timeout.as_ref().map(span_of)),
            ("approval_shows_prompt", r.approval_shows_prompt.as_ref().map(span_of)),
            ("approval_max_held", r.approval_max_held.as_ref().map(span_of)),
        ];
        if !waits {
            for (field, span) in settings {
                if let Some(span) = span {
                    self.err(
                        span,
                        format!(
                            "`{field}` applies to `hold` rules and rules whose DLP profile's \
                             action is `approve`; rule `{name}` holds nothing"
                        ),
                    );
                }
            }
            return None;
        }
        let timeout_s = match &r.approval_timeout {
            Some(t) if !(5..=3600).contains(t.get_ref()) => {
                self.err(
                    span_of(t),
                    format!("`approval_timeout` is 5 to 3600 seconds; {} is not", t.get_ref()),
                );
                return None;
            }
            Some(t) => *t.get_ref(),
            None => DEFAULT_APPROVAL_TIMEOUT,
        };
        let max_held = match &r.approval_max_held {
            Some(m) if !(1..=1024).contains(m.get_ref()) => {
                self.err(
                    span_of(m),
                    format!("`approval_max_held` is 1 to 1024; {} is not", m.get_ref()),
                );
                return None;
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_MAX_HELD,
        };
        Some(ApprovalPolicy {
            every_request: written == RuleAction::Hold,
            timeout_s,
            shows_prompt: r.approval_shows_prompt.as_ref().is_some_and(|s| *s.get_ref()),
            max_held,
        })
    }
}

/// Most recipients recordings are encrypted to.
pub const MAX_RECIPIENTS: usize = 16;

impl Cx<'_> {
    /// `[defaults] recording_recipients`, each an age X25519 public key.
    pub(super) fn recording_recipients(&mut self, d: Option<&DefaultsDef>) -> Vec<String> {
        let Some(d) = d else { return Vec::new() };
        if d.recording_recipients.len() > MAX_RECIPIENTS {
            self.err(
                span_of(&d.recording_recipients[MAX_RECIPIENTS]),
                format!("at most {MAX_RECIPIENTS} recording recipients"),
            );
        }
        let mut out = Vec::new();
        for r in d.recording_recipients.iter().take(MAX_RECIPIENTS) {
            match r.get_ref().parse::<age::x25519::Recipient>() {
                Ok(_) => out.push(r.get_ref().clone()),
                Err(e) => self.err(
                    span_of(r),
                    format!(
                        "`{}` is not an age X25519 public key (age1…, as `age-keygen` prints): {e}",
                        r.get_ref()
                    ),
                ),
            }
        }
        out
    }

    /// The rule's `record`: an `inspect` rule, and somewhere to encrypt to.
    pub(super) fn record(
        &mut self,
        r: &RuleDef,
        name: &str,
        action: Action,
        defaults: &Defaults,
    ) -> Option<RecordMode> {
        let m = r.record.as_ref()?;
        if action != Action::Inspect {
            self.err(
                span_of(m),
                format!(
                    "`record` applies only to `inspect` and `hold` rules (only a decrypted request \
                     can be recorded); rule `{name}` is `{}`",
                    action.as_str()
                ),
            );
            return None;
        }
        if defaults.recording_recipients.is_empty() {
            self.err(
                span_of(m),
                format!(
                    "rule `{name}` records, and `[defaults] recording_recipients` names no public \
                     key to encrypt recordings to"
                ),
            );
            return None;
        }
        Some(*m.get_ref())
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::ShippedOnly;
    use crate::policy::{Measure, Window};
    use crate::schema::{QuotaBy, RecordMode};

    use super::super::one_rule as compile;

    #[test]
    fn a_quota_compiles_to_its_limits() {
        let c = compile(
            "action = \"inspect\"\nbroker_key = \"k\"\nquota = { by = \"key\", tokens_per_day = 200000, requests_per_minute = 5 }",
        )
        .unwrap();
        let q = c.policy.rules[0].spec.headers.quota.clone().unwrap();
        assert_eq!(q.by, QuotaBy::Key);
        let got: Vec<_> = q.limits.iter().map(|l| (l.measure, l.window, l.max)).collect();
        assert_eq!(
            got,
            vec![(Measure::Requests, Window::Minute, 5), (Measure::Tokens, Window::Day, 200_000)]
        );
        let c = compile("action = \"inspect\"\nquota = { requests_per_hour = 1 }").unwrap();
        assert_eq!(c.policy.rules[0].spec.headers.quota.clone().unwrap().by, QuotaBy::User);
    }

    #[test]
    fn bad_quotas_are_refused_at_their_line() {
        let e = compile("action = \"allow\"\nquota = { tokens_per_day = 5 }").unwrap_err();
        assert!(e.contains("t.toml:9:") && e.contains("only to `inspect` rules"), "{e}");
        let e = compile("action = \"inspect\"\nquota = { by = \"user\" }").unwrap_err();
        assert!(e.contains("sets no limit"), "{e}");
        let e = compile("action = \"inspect\"\nquota = { tokens_per_day = 0 }").unwrap_err();
        assert!(e.contains("from 1 to"), "{e}");
        let e = compile("action = \"inspect\"\nquota = { tokens_per_week = 5 }").unwrap_err();
        assert!(e.contains("unknown field `tokens_per_week`"), "{e}");
        let e = compile("action = \"inspect\"\nquota = { by = \"team\", tokens_per_day = 5 }")
            .unwrap_err();
        assert!(e.contains("unknown variant `team`"), "{e}");
        let e = compile("action = \"inspect\"\nquota = { by = \"key\", tokens_per_day = 5 }")
            .unwrap_err();
        assert!(e.contains("only a rule with `broker_key`"), "{e}");
    }

    #[test]
    fn hold_rules_and_approving_profiles_wait_for_a_reviewer() {
        let c = compile("action = \"hold\"\napproval_timeout = 30\napproval_shows_prompt = true")
            .unwrap();
        let r = &c.policy.rules[0];
        assert_eq!(r.spec.action, crate::Action::Inspect, "a held rule's flows are inspected");
        let a = r.spec.headers.approval.clone().unwrap();
        assert_eq!((a.every_request, a.timeout_s, a.shows_prompt, a.max_held), (true, 30, true, 8));
        let text = "[[category]]\nname = \"c\"\ndomains = [\"api.example\"]\n\n[[dlp]]\nname = \"p\"\ndetectors = [\"credit_card\"]\naction = \"approve\"\n\n[[rule]]\nname = \"r\"\ncategories = [\"c\"]\naction = \"inspect\"\ndlp = \"p\"\napproval_max_held = 2\n";
        let c = crate::compile("t.toml", text, &ShippedOnly).unwrap();
        let a = c.policy.rules[0].spec.headers.approval.clone().unwrap();
        assert_eq!((a.every_request, a.timeout_s, a.max_held), (false, 120, 2));
    }

    #[test]
    fn approval_settings_where_nothing_waits_or_out_of_range_are_refused() {
        let e = compile("action = \"inspect\"\napproval_timeout = 30").unwrap_err();
        assert!(e.contains("t.toml:9:") && e.contains("holds nothing"), "{e}");
        let e = compile("action = \"hold\"\napproval_timeout = 1").unwrap_err();
        assert!(e.contains("5 to 3600"), "{e}");
        let e = compile("action = \"hold\"\napproval_max_held = 0").unwrap_err();
        assert!(e.contains("1 to 1024"), "{e}");
        let e = compile("action = \"wait\"").unwrap_err();
        assert!(e.contains("expected one of `allow`, `block`, `inspect`, `hold`"), "{e}");
    }

    #[test]
    fn recordings_need_an_inspect_rule_and_a_valid_recipient() {
        let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let with = |defaults: &str, rule: &str| {
            let text = format!(
                "[defaults]\n{defaults}\n[[category]]\nname = \"c\"\ndomains = [\"api.example\"]\n\n[[rule]]\nname = \"r\"\ncategories = [\"c\"]\n{rule}\n"
            );
            crate::compile("t.toml", &text, &ShippedOnly)
                .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
        };
        let ok = format!("recording_recipients = [\"{key}\"]");
        let c = with(&ok, "action = \"inspect\"\nrecord = \"request+response\"").unwrap();
        assert_eq!(c.policy.rules[0].spec.headers.record, Some(RecordMode::RequestResponse));
        assert_eq!(c.policy.defaults.recording_recipients, [key]);
        let e = with("", "action = \"inspect\"\nrecord = \"request\"").unwrap_err();
        assert!(e.contains("names no public key"), "{e}");
        let e = with(&ok, "action = \"allow\"\nrecord = \"request\"").unwrap_err();
        assert!(e.contains("only to `inspect`"), "{e}");
        let e = with("recording_recipients = [\"age1nope\"]", "action = \"block\"").unwrap_err();
        assert!(e.contains("not an age X25519 public key") && e.contains("t.toml:2:"), "{e}");
        let e = with(&ok, "action = \"inspect\"\nrecord = \"everything\"").unwrap_err();
        assert!(e.contains("unknown variant `everything`"), "{e}");
    }

    #[test]
    fn windows_start_on_utc_boundaries() {
        assert_eq!(Window::Minute.start(125), 120);
        assert_eq!(Window::Hour.start(7300), 7200);
        assert_eq!(Window::Day.start(86_400 * 3 + 5), 86_400 * 3);
        assert_eq!(Window::parse("hour"), Some(Window::Hour));
        assert_eq!(Window::parse("week"), None);
    }
}
