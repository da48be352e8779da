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
    "us_ssn", "pii", "US social security numbers";
    "email", "pii", "email addresses";
    "phone", "pii", "phone numbers (E.164 and common national forms)";
    "uk_nino", "pii", "UK national insurance numbers";
    "ip_address", "pii", "IPv4 and IPv6 addresses (opt-in)";
    "aws_access_key_id", "credential", "AWS access key ids (AKIA…, ASIA…)";
    "aws_secret_access_key", "credential", "AWS secret access keys near a keyword";
    "openai_api_key", "credential", "OpenAI API keys (sk-…, sk-proj-…)";
    "anthropic_api_key", "credential", "Anthropic API keys (sk-ant-…)";
    "google_api_key", "credential", "Google API keys (AIza…)";
    "azure_storage_key", "credential", "Azure storage account keys and connection strings";
    "github_token", "credential", "GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_)";
    "gitlab_token", "credential", "GitLab personal access tokens (glpat-…)";
    "slack_token", "credential", "Slack tokens (xox…)";
    "slack_webhook", "credential", "Slack incoming webhook URLs";
    "stripe_key", "credential", "Stripe secret and restricted keys";
    "twilio_key", "credential", "Twilio API keys";
    "sendgrid_key", "credential", "SendGrid API keys";
    "npm_token", "credential", "npm access tokens";
    "pypi_token", "credential", "PyPI upload tokens";
    "jwt", "credential", "JSON Web Tokens";
    "private_key", "credential", "PEM private keys";
    "connection_string_password", "credential", "passwords inside connection strings and URLs";
    "generic_secret", "credential", "high-entropy secrets near a keyword (password, token, secret)";
}

/// The registry entry for `name`.
pub fn lookup(name: &str) -> Option<&'static DetectorInfo> {
    DETECTORS.iter().find(|d| d.name == name)
}
