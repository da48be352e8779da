//! `broker_key` and `real_keys`: the provider key a rule sends upstream in place of the
//! client's credential (the key itself lives in control's key store, never in a rule file).

use super::{Cx, name_msg, span_of, valid_name};
use crate::policy::BrokerPolicy;
use crate::schema::{Action, RealKeys, RuleDef};

impl Cx<'_> {
    /// The rule's brokered key, validated: an `inspect` rule (only an inspected request's
    /// headers can be rewritten) and a valid key name; `real_keys` only with a `broker_key`.
    pub(super) fn broker(
        &mut self,
        r: &RuleDef,
        name: &str,
        action: Action,
    ) -> Option<BrokerPolicy> {
        let Some(key) = &r.broker_key else {
            if let Some(rk) = &r.real_keys {
                self.err(
                    span_of(rk),
                    format!("`real_keys` needs a `broker_key`; rule `{name}` has none"),
                );
            }
            return None;
        };
        if action != Action::Inspect {
            self.err(
                span_of(key),
                format!(
                    "`broker_key` applies only to `inspect` rules (only an inspected request's \
                     credential can be replaced); rule `{name}` is `{}`",
                    action.as_str()
                ),
            );
            return None;
        }
        if !valid_name(key.get_ref()) {
            self.err(span_of(key), name_msg("key name", key.get_ref()));
            return None;
        }
        Some(BrokerPolicy {
            key: key.get_ref().clone(),
            swap_real_keys: r.real_keys.as_ref().is_some_and(|k| *k.get_ref() == RealKeys::Swap),
        })
    }
}

#[cfg(test)]
mod tests {

    use super::super::one_rule as compile;

    #[test]
    fn an_inspect_rule_brokers_a_named_key() {
        let c = compile("action = \"inspect\"\nbroker_key = \"openai-prod\"\nreal_keys = \"swap\"")
            .unwrap();
        let b = c.policy.rules[0].spec.headers.broker.clone().unwrap();
        assert_eq!((b.key.as_str(), b.swap_real_keys), ("openai-prod", true));
        let c = compile("action = \"inspect\"\nbroker_key = \"k\"").unwrap();
        assert!(!c.policy.rules[0].spec.headers.broker.clone().unwrap().swap_real_keys);
    }

    #[test]
    fn brokering_outside_inspect_or_without_a_key_is_refused_at_its_line() {
        let e = compile("action = \"allow\"\nbroker_key = \"k\"").unwrap_err();
        assert!(e.contains("t.toml:9:") && e.contains("only to `inspect` rules"), "{e}");
        let e = compile("action = \"inspect\"\nreal_keys = \"swap\"").unwrap_err();
        assert!(e.contains("needs a `broker_key`"), "{e}");
        let e = compile("action = \"inspect\"\nbroker_key = \"no spaces\"").unwrap_err();
        assert!(e.contains("not a valid key name"), "{e}");
        let e =
            compile("action = \"inspect\"\nbroker_key = \"k\"\nreal_keys = \"keep\"").unwrap_err();
        assert!(e.contains("unknown variant `keep`, expected `refuse` or `swap`"), "{e}");
    }
}
