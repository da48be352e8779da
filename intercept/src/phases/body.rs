//! The body phase (ARCHITECTURE.md, "Interception phases"): the body decoded once, the model
//! read from wherever the endpoint carries it and checked against the rule's list, DLP (block,
//! redact, alert), and the refusals these make.

use super::*;

impl Session {
    /// Phase 3: the whole request body (de-framed, as the client sent it; empty for none).
    /// It is decoded once here; the model is read and checked; DLP scans the decoded text.
    /// Last, whether the request must wait for a reviewer ([`Session::hold`] waits).
    pub fn request_body_filter(
        &self,
        req: &RequestView<'_>,
        body: Vec<u8>,
        ctx: &mut RequestCtx,
    ) -> Result<Forward, Refusal> {
        let fwd = self.inspect_body(req, body, ctx)?;
        self.hold_if(req, &fwd, ctx);
        Ok(fwd)
    }

    fn inspect_body(
        &self,
        req: &RequestView<'_>,
        body: Vec<u8>,
        ctx: &mut RequestCtx,
    ) -> Result<Forward, Refusal> {
        let rec = &mut ctx.rec;
        rec.bytes_out = body.len() as u64;
        let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        let encoding = req.headers.header("content-encoding").filter(|e| {
            !e.iter().all(u8::is_ascii_whitespace)
                && !e.trim_ascii().eq_ignore_ascii_case(b"identity")
        });
        let decoded = match encoding {
            Some(enc) if !body.is_empty() => match sluice_dlp::body::decode(enc, &body, limit) {
                Ok(d) => Some(d),
                Err(e) => {
                    if let Some(c) = rec.capture.as_mut() {
                        c.request_body(&body, false);
                    }
                    let cannot = format!("the request body could not be decoded: {e}");
                    if !self.headers.allowed_models.is_empty() {
                        return Err(self.model_refusal(&ModelError::Unreadable("undecodable body")));
                    }
                    if let Some(d) = &self.dlp {
                        rec.dlp_profile = Some(d.profile.clone());
                        rec.dlp_action = Some("unscanned");
                        rec.unscanned.push(format!("$ ({e})"));
                    }
                    if self.dlp.is_some() && (!self.fail_open || self.headers.block_unscanned) {
                        return Err(Refusal {
                            status: 403,
                            code: "inspection_failed",
                            message: cannot,
                            rule: self.rule.clone(),
                            retry_after: None,
                        });
                    }
                    if self.dlp.is_some() {
                        rec.reason = Some(format!(
                            "body not inspected ({e}): forwarded (on_inspect_failure = allow, on_unscanned = allow)"
                        ));
                    }
                    return Ok(Forward { body, decoded: false });
                }
            },
            _ => None,
        };
        let plain = decoded.as_deref().unwrap_or(&body);
        if let Some(c) = rec.capture.as_mut() {
            c.request_body(plain, decoded.is_some());
        }
        self.body_operation(plain, ctx)?;
        let rec = &mut ctx.rec;
        let ctype = req.headers.header("content-type");
        match model_of(req.target, ctype, plain) {
            Ok(m) => rec.model = m,
            Err(e @ ModelError::Ambiguous(_)) => return Err(self.model_refusal(&e)),
            Err(e) if !self.headers.allowed_models.is_empty() => {
                return Err(self.model_refusal(&e));
            }
            Err(_) => {}
        }
        if let Some(m) = rec.model.as_deref()
            && !self.headers.allowed_models.is_empty()
            && !self.headers.allowed_models.iter().any(|a| a == m)
        {
            return Err(Refusal::forbidden(
                "model_not_allowed",
                format!("model {m} is not allowed"),
                self.rule.as_deref(),
            ));
        }
        let Some(profile) = &self.dlp else { return Ok(Forward { body, decoded: false }) };
        let input =
            dlp::Input { req: Some(req), content_type: ctype, body: plain, policy: &self.headers };
        match dlp::scan(profile, &input, self.rule.as_deref(), rec)? {
            Some(redacted) => Ok(Forward { body: redacted, decoded: true }),
            None => Ok(Forward { body, decoded: false }),
        }
    }

    /// Whether a body over the inspection limit is forwarded uninspected: the rule fails open
    /// and has no model allow-list (a model could not be checked in a body never read).
    pub fn streams_uninspected(&self) -> bool {
        // (Not where a key is brokered: a streamed body's trailers would go up unread; nor
        // where requests wait for approval: a reviewer decides on a request read whole.)
        // Nor where requests are decided by what they do: a body never read could be a file.
        self.fail_open
            && self.headers.allowed_models.is_empty()
            && self.headers.broker.is_none()
            && self.headers.approval.is_none()
            && self.recorder.is_none()
            && self.apps.per_request.is_none()
    }

    /// The refusal of a body larger than the inspection limit (without fail-open).
    pub fn over_limit(&self) -> Refusal {
        Refusal {
            status: 413,
            code: "inspection_limit",
            message: format!(
                "the request body is larger than the inspection limit ({} bytes)",
                self.max_body
            ),
            rule: self.rule.clone(),
            retry_after: None,
        }
    }

    pub(super) fn model_refusal(&self, e: &ModelError) -> Refusal {
        match e {
            ModelError::Ambiguous(_) => Refusal {
                status: 400,
                code: "ambiguous_request",
                message: e.to_string(),
                rule: self.rule.clone(),
                retry_after: None,
            },
            _ => Refusal::forbidden(
                "model_unreadable",
                format!("the rule allows only some models and {e}"),
                self.rule.as_deref(),
            ),
        }
    }
}
