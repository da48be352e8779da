//! Small formatting helpers.

/// Lowercase colon-separated MAC.
pub fn mac(m: &[u8; 6]) -> String {
    sluice_rules::ident::format_mac(m)
}
