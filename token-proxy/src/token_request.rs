//! Parsing and validating a `client_credentials` token request (RFC 6749 §2.3.1, §3.2, §4.4)
//! up to, not including, checking the secret. Everything here is cheap, so malformed
//! requests are turned away before any argon2 work.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};

use crate::answer::OAuthError;
use crate::config::is_scope_token;

/// A request to `POST /oauth2/token`, as the gateway received it.
#[derive(Clone, Copy)]
pub struct TokenRequest<'a> {
    pub method: &'a str,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

impl fmt::Debug for TokenRequest<'_> {
    // The header and the body can both carry the client secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("method", &self.method)
            .field("authorization", &self.authorization.map(|_| "<redacted>"))
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl TokenRequest<'_> {
    /// The client id the request claims (Basic credentials, else the form's `client_id`),
    /// unchecked: for access logs, which name the caller but never its secret. `None` when
    /// the request names no client or cannot be parsed.
    pub fn claimed_client_id(&self) -> Option<String> {
        match self.authorization {
            Some(authorization) => parse_basic(authorization).ok().map(|(id, _)| id),
            None => parse_params(self.body).ok()?.client_id.map(Cow::into_owned),
        }
    }
}

/// How the client authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    Basic,
    Post,
}

/// The client's claimed identity and secret.
pub(crate) struct Credentials {
    pub method: AuthMethod,
    pub client_id: String,
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("method", &self.method)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A syntactically valid client_credentials request.
#[derive(Debug)]
pub(crate) struct ClientCredentialsGrant {
    pub credentials: Credentials,
    /// The requested scopes, deduplicated and sorted; `None` asks for all the client's.
    pub scope: Option<BTreeSet<String>>,
}

/// Padding is optional in what clients send; some libraries omit it.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The parameters of the form body. RFC 6749 §3.2: none may repeat; one sent without a
/// value counts as omitted.
#[derive(Default)]
struct Params<'a> {
    grant_type: Option<Cow<'a, str>>,
    scope: Option<Cow<'a, str>>,
    client_id: Option<Cow<'a, str>>,
    client_secret: Option<Cow<'a, str>>,
}

fn parse_params(body: &[u8]) -> Result<Params<'_>, OAuthError> {
    let mut params = Params::default();
    let mut others: Vec<Cow<'_, str>> = Vec::new();
    for (name, value) in form_urlencoded::parse(body) {
        let slot = match name.as_ref() {
            "grant_type" => &mut params.grant_type,
            "scope" => &mut params.scope,
            "client_id" => &mut params.client_id,
            "client_secret" => &mut params.client_secret,
            _ => {
                if others.contains(&name) {
                    return Err(OAuthError::invalid_request(
                        "a request parameter is repeated",
                    ));
                }
                others.push(name);
                continue;
            }
        };
        if slot.is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter `{name}` is repeated"
            )));
        }
        // Mark the slot taken even for an empty value, so `a=&a=x` still counts as repeated.
        *slot = Some(value);
    }
    for slot in [
        &mut params.grant_type,
        &mut params.scope,
        &mut params.client_id,
        &mut params.client_secret,
    ] {
        if slot.as_deref().is_some_and(str::is_empty) {
            *slot = None;
        }
    }
    Ok(params)
}

fn is_form_content_type(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// Undo the `application/x-www-form-urlencoded` encoding RFC 6749 §2.3.1 applies to the
/// client id and secret before they are joined for Basic.
fn form_decode(s: &str) -> Option<String> {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// Decode `Authorization: Basic ...` into (client id, secret).
fn parse_basic(authorization: &str) -> Result<(String, String), OAuthError> {
    let bad = |why: &'static str| OAuthError::invalid_client(why, true);
    let authorization = authorization.trim();
    let (scheme, rest) = authorization.split_once(' ').unwrap_or((authorization, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad(
            "the token endpoint accepts Basic client authentication only",
        ));
    }
    let decoded = BASIC_B64
        .decode(rest.trim())
        .map_err(|_| bad("malformed Basic credentials"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("malformed Basic credentials"))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| bad("malformed Basic credentials"))?;
    let id = form_decode(id).ok_or_else(|| bad("malformed Basic credentials"))?;
    let secret = form_decode(secret).ok_or_else(|| bad("malformed Basic credentials"))?;
    Ok((id, secret))
}

fn credentials(req: &TokenRequest<'_>, params: &Params<'_>) -> Result<Credentials, OAuthError> {
    let basic = req.authorization.map(parse_basic).transpose()?;
    match (basic, &params.client_id, &params.client_secret) {
        (Some(_), _, Some(_)) => Err(OAuthError::invalid_request(
            "use exactly one client authentication method (Basic or client_secret_post)",
        )),
        (Some((id, _)), Some(body_id), None) if *body_id != id => Err(OAuthError::invalid_request(
            "client_id in the body differs from the Basic credentials",
        )),
        (Some((client_id, secret)), _, None) => Ok(Credentials {
            method: AuthMethod::Basic,
            client_id,
            secret,
        }),
        (None, Some(id), Some(secret)) => Ok(Credentials {
            method: AuthMethod::Post,
            client_id: id.to_string(),
            secret: secret.to_string(),
        }),
        (None, None, Some(_)) => Err(OAuthError::invalid_request(
            "client_secret without client_id",
        )),
        (None, Some(_), None) => Err(OAuthError::invalid_client(
            "client authentication is required (public clients are not supported)",
            false,
        )),
        (None, None, None) => Err(OAuthError::invalid_client(
            "client authentication is required",
            true,
        )),
    }
}

/// Split, check, dedupe and sort a `scope` parameter.
pub(crate) fn parse_scope(scope: &str) -> Result<Option<BTreeSet<String>>, OAuthError> {
    let mut set = BTreeSet::new();
    for token in scope.split(' ').filter(|t| !t.is_empty()) {
        if !is_scope_token(token) {
            return Err(OAuthError::invalid_scope(
                "the scope parameter is malformed",
            ));
        }
        set.insert(token.to_string());
    }
    Ok(if set.is_empty() { None } else { Some(set) })
}

/// Check everything about a token request that needs no secret verification.
pub(crate) fn parse(req: &TokenRequest<'_>) -> Result<ClientCredentialsGrant, OAuthError> {
    if req.method != "POST" {
        return Err(OAuthError::new(
            405,
            "invalid_request",
            "the token endpoint accepts POST only",
        ));
    }
    if !req.content_type.is_some_and(is_form_content_type) {
        return Err(OAuthError::invalid_request(
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let params = parse_params(req.body)?;
    match params.grant_type.as_deref() {
        None => return Err(OAuthError::invalid_request("grant_type is required")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            ));
        }
    }
    let credentials = credentials(req, &params)?;
    let scope = match params.scope.as_deref() {
        Some(s) => parse_scope(s)?,
        None => None,
    };
    Ok(ClientCredentialsGrant { credentials, scope })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    fn basic(raw: &str) -> String {
        format!("Basic {}", general_purpose::STANDARD.encode(raw))
    }

    fn req<'a>(authorization: Option<&'a str>, body: &'a str) -> TokenRequest<'a> {
        TokenRequest {
            method: "POST",
            authorization,
            content_type: FORM,
            body: body.as_bytes(),
        }
    }

    fn err(r: TokenRequest<'_>) -> OAuthError {
        parse(&r).expect_err("rejected")
    }

    #[test]
    fn the_claimed_client_id_never_carries_the_secret() {
        let auth = basic("partner-1:s3cret");
        assert_eq!(
            req(Some(&auth), "grant_type=client_credentials").claimed_client_id(),
            Some("partner-1".to_owned())
        );
        let post = req(
            None,
            "grant_type=client_credentials&client_id=p2&client_secret=s3cret",
        );
        assert_eq!(post.claimed_client_id(), Some("p2".to_owned()));
        assert_eq!(
            req(None, "grant_type=client_credentials").claimed_client_id(),
            None
        );
        assert_eq!(req(Some("Bearer x"), "").claimed_client_id(), None);
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let auth = basic("my%3Aclient:p%40ss+word%2B:x");
        let g = parse(&req(Some(&auth), "grant_type=client_credentials")).unwrap();
        assert_eq!(g.credentials.method, AuthMethod::Basic);
        assert_eq!(g.credentials.client_id, "my:client");
        assert_eq!(g.credentials.secret, "p@ss word+:x");
        assert_eq!(g.scope, None);
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_padding_optional() {
        let auth = format!("bAsIc  {}", general_purpose::STANDARD_NO_PAD.encode("a:bc"));
        let g = parse(&req(Some(&auth), "grant_type=client_credentials")).unwrap();
        assert_eq!(
            (
                g.credentials.client_id.as_str(),
                g.credentials.secret.as_str()
            ),
            ("a", "bc")
        );
    }

    #[test]
    fn malformed_or_foreign_authorization_is_invalid_client_with_a_challenge() {
        for auth in ["Basic !!!", "Bearer abc", "Basic", &basic("no-colon")] {
            let e = err(req(Some(auth), "grant_type=client_credentials"));
            assert_eq!(
                (e.status, e.error, e.challenge),
                (401, "invalid_client", true),
                "{auth}"
            );
        }
    }

    #[test]
    fn posted_credentials() {
        let g = parse(&req(
            None,
            "grant_type=client_credentials&client_id=c%2B1&client_secret=s+1&scope=b+a+b",
        ))
        .unwrap();
        assert_eq!(g.credentials.method, AuthMethod::Post);
        assert_eq!(g.credentials.client_id, "c+1");
        assert_eq!(g.credentials.secret, "s 1");
        assert_eq!(g.scope.unwrap().into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn credential_combinations() {
        let auth = basic("c:s");
        let both = err(req(
            Some(&auth),
            "grant_type=client_credentials&client_id=c&client_secret=s",
        ));
        assert_eq!((both.status, both.error), (400, "invalid_request"));
        let mismatch = err(req(
            Some(&auth),
            "grant_type=client_credentials&client_id=other",
        ));
        assert_eq!((mismatch.status, mismatch.error), (400, "invalid_request"));
        let same = parse(&req(
            Some(&auth),
            "grant_type=client_credentials&client_id=c",
        ))
        .unwrap();
        assert_eq!(same.credentials.method, AuthMethod::Basic);
        let none = err(req(None, "grant_type=client_credentials"));
        assert_eq!(
            (none.status, none.error, none.challenge),
            (401, "invalid_client", true)
        );
        let id_only = err(req(None, "grant_type=client_credentials&client_id=c"));
        assert_eq!(
            (id_only.status, id_only.error, id_only.challenge),
            (401, "invalid_client", false)
        );
        let secret_only = err(req(None, "grant_type=client_credentials&client_secret=s"));
        assert_eq!(secret_only.error, "invalid_request");
        assert!(
            !format!("{secret_only:?}{both:?}").contains("=s"),
            "no secret echoed"
        );
    }

    #[test]
    fn method_content_type_and_grant() {
        let auth = basic("c:s");
        let mut get = req(Some(&auth), "grant_type=client_credentials");
        get.method = "GET";
        assert_eq!((err(get).status, err(get).error), (405, "invalid_request"));
        for ct in [
            None,
            Some("application/json"),
            Some("text/plain; a=application/x-www-form-urlencoded"),
        ] {
            let mut r = req(Some(&auth), "grant_type=client_credentials");
            r.content_type = ct;
            assert_eq!(err(r).error, "invalid_request", "{ct:?}");
        }
        let mut r = req(Some(&auth), "grant_type=client_credentials");
        r.content_type = Some("Application/X-WWW-Form-Urlencoded ; charset=UTF-8");
        assert!(parse(&r).is_ok());
        assert_eq!(err(req(Some(&auth), "scope=a")).error, "invalid_request");
        assert_eq!(
            err(req(Some(&auth), "grant_type=")).error,
            "invalid_request"
        );
        let e = err(req(
            Some(&auth),
            "grant_type=password&username=u&password=p",
        ));
        assert_eq!((e.status, e.error), (400, "unsupported_grant_type"));
    }

    #[test]
    fn repeated_parameters_are_invalid_request() {
        let auth = basic("c:s");
        for body in [
            "grant_type=client_credentials&grant_type=client_credentials",
            "grant_type=client_credentials&scope=a&scope=b",
            "grant_type=client_credentials&scope=&scope=b",
            "grant_type=client_credentials&x=1&x=2",
        ] {
            let e = err(req(Some(&auth), body));
            assert_eq!((e.status, e.error), (400, "invalid_request"), "{body}");
        }
    }

    #[test]
    fn scope_syntax() {
        assert_eq!(parse_scope("").unwrap(), None);
        assert_eq!(parse_scope("  ").unwrap(), None);
        let s = parse_scope(" b  a b ").unwrap().unwrap();
        assert_eq!(s.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        for bad in ["a\tb", "a\"b", "a\\b", "é"] {
            assert_eq!(
                parse_scope(bad).unwrap_err().error,
                "invalid_scope",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let auth = basic("c:topsecret");
        let r = req(
            Some(&auth),
            "grant_type=client_credentials&client_secret=topsecret",
        );
        assert!(!format!("{r:?}").contains("topsecret"));
        let g = parse(&req(Some(&auth), "grant_type=client_credentials")).unwrap();
        assert!(!format!("{g:?}").contains("topsecret"));
    }
}
