//! The registry of DLP detector names that profiles may list. Validation checks profile
//! entries against it; the DLP engine provides a matcher for each name.

/// A detector known to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorInfo {
    /// Name used in rule files and findings.
    pub name: &'static str,
    /// Family, for quality reporting (`pii`, `financial`, `credential`).
    pub family: &'static str,
    /// What it finds.
    pub description: &'static str,
}

macro_rules! detectors {
    ($($name:literal, $family:literal, $desc:literal;)*) => {
        /// Every detector name a DLP profile may use.
        pub const DETECTORS: &[DetectorInfo] = &[
            $(DetectorInfo { name: $name, family: $family, description: $desc },)*
        ];
    };
}

detectors! {
    "credit_card", "financial", "payment card numbers (Luhn, brand prefixes and lengths)";
    "iban", "financial", "IBANs (country length and mod-97)";
    "us_ssn", "pii", "US social security numbers (impossible areas, groups and serials excluded)";
    "email", "pii", "email addresses";
    "phone", "pii", "phone numbers (E.164 and common national forms)";
    "uk_nino", "pii", "UK national insurance numbers";
    "ip_address", "pii", "IPv4 addresses (opt-in)";
    "aws_access_key_id", "credential", "AWS access key ids (AKIA…, ASIA…)";
    "aws_secret_access_key", "credential", "AWS secret access keys near a keyword";
    "openai_api_key", "credential", "OpenAI API keys (sk-…, sk-proj-…, sk-svcacct-…)";
    "openai_admin_key", "credential", "OpenAI admin keys (sk-admin-…)";
    "anthropic_api_key", "credential", "Anthropic API keys (sk-ant-api…)";
    "anthropic_admin_key", "credential", "Anthropic admin keys (sk-ant-admin…)";
    "google_api_key", "credential", "Google API keys (AIza…)";
    "google_oauth_secret", "credential", "Google OAuth client secrets (GOCSPX-…)";
    "google_oauth_token", "credential", "Google OAuth access tokens (ya29.…)";
    "azure_storage_key", "credential", "Azure storage account keys in connection strings (AccountKey=…)";
    "azure_client_secret", "credential", "Azure AD / Entra client secrets (…8Q~…)";
    "github_token", "credential", "GitHub personal access tokens (ghp_…)";
    "github_oauth_token", "credential", "GitHub OAuth tokens (gho_…)";
    "github_app_token", "credential", "GitHub app user and installation tokens (ghu_…, ghs_…)";
    "github_refresh_token", "credential", "GitHub refresh tokens (ghr_…)";
    "github_fine_grained_pat", "credential", "GitHub fine-grained tokens (github_pat_…)";
    "gitlab_token", "credential", "GitLab personal access tokens (glpat-…)";
    "gitlab_runner_token", "credential", "GitLab runner tokens (glrt-…)";
    "gitlab_deploy_token", "credential", "GitLab deploy tokens (gldt-…)";
    "slack_bot_token", "credential", "Slack bot tokens (xoxb-…)";
    "slack_user_token", "credential", "Slack user tokens (xoxp-…)";
    "slack_app_token", "credential", "Slack app-level tokens (xapp-…)";
    "slack_webhook", "credential", "Slack incoming webhook URLs";
    "stripe_key", "credential", "Stripe live secret keys (sk_live_…)";
    "stripe_restricted_key", "credential", "Stripe restricted keys (rk_live_…)";
    "stripe_test_key", "credential", "Stripe test secret keys (sk_test_…)";
    "twilio_key", "credential", "Twilio API keys (SK + 32 hex)";
    "sendgrid_key", "credential", "SendGrid API keys (SG.….…)";
    "npm_token", "credential", "npm access tokens (npm_…)";
    "pypi_token", "credential", "PyPI upload tokens (pypi-AgEI…)";
    "huggingface_token", "credential", "Hugging Face tokens (hf_…)";
    "shopify_token", "credential", "Shopify access tokens (shpat_, shpss_, shpca_, shppa_)";
    "digitalocean_token", "credential", "DigitalOcean tokens (dop_v1_, doo_v1_, dor_v1_)";
    "databricks_token", "credential", "Databricks tokens (dapi + 32 hex)";
    "vault_token", "credential", "HashiCorp Vault service tokens (hvs.…)";
    "doppler_token", "credential", "Doppler tokens (dp.pt.…, dp.st.…)";
    "linear_api_key", "credential", "Linear API keys (lin_api_…)";
    "atlassian_token", "credential", "Atlassian API tokens (ATATT3x…)";
    "grafana_token", "credential", "Grafana service account tokens (glsa_…)";
    "new_relic_key", "credential", "New Relic user API keys (NRAK-…)";
    "sentry_token", "credential", "Sentry auth tokens (sntrys_…)";
    "postman_key", "credential", "Postman API keys (PMAK-…)";
    "dockerhub_token", "credential", "Docker Hub personal access tokens (dckr_pat_…)";
    "age_secret_key", "credential", "age encryption secret keys (AGE-SECRET-KEY-1…)";
    "telegram_bot_token", "credential", "Telegram bot tokens (digits:35 characters)";
    "jwt", "credential", "JSON Web Tokens";
    "private_key", "credential", "PEM private keys (RSA, EC, PKCS#8, encrypted)";
    "ssh_private_key", "credential", "OpenSSH private keys";
    "pgp_private_key", "credential", "PGP private key blocks";
    "connection_string_password", "credential", "passwords inside connection strings and URLs";
    "generic_secret", "credential", "high-entropy secrets near a keyword (password, token, secret)";
}

/// The registry entry for `name`.
pub fn lookup(name: &str) -> Option<&'static DetectorInfo> {
    DETECTORS.iter().find(|d| d.name == name)
}

/// Detectors a `@family` entry leaves out: too common in ordinary text to be on by default
/// (name them to enable them).
pub const OPT_IN: &[&str] = &["ip_address"];

/// Whether `name` is enabled only by naming it.
pub fn opt_in(name: &str) -> bool {
    OPT_IN.contains(&name)
}
