//! Probing each candidate (TLS, certificate, AUTH offered) and testing the
//! login, with what failed said in plain words.

use std::net::IpAddr;

use smtp_core::Phase;
use smtp_core::delivery::direct::{Attempt, diagnose};
use smtp_core::delivery::mx::{DnsError, Resolver};
use smtp_core::delivery::{Transport, drive};
use smtp_core::ehlo::ClientId;
use smtp_core::sasl::Credentials;
use smtp_core::{Error, Event, Timeouts, TlsPolicy};
use smtp_dns::HickoryResolver;
use smtp_tls::{Error as TlsError, Server, TcpTransport, Trust};

use crate::advice;
use crate::cli::AuthArg;
use crate::output::ErrorReport;
use crate::settings::mechanism;

use super::*;

pub(super) fn is_oauth(mechanism: &str) -> bool {
    mechanism.eq_ignore_ascii_case("XOAUTH2") || mechanism.eq_ignore_ascii_case("OAUTHBEARER")
}

/// What probing and the login test share.
pub(super) struct Probing<'a> {
    pub(super) resolver: &'a HickoryResolver,
    pub(super) trust: &'a Trust,
    pub(super) timeouts: &'a Timeouts,
    pub(super) client_id: &'a ClientId,
}

impl Probing<'_> {
    /// The settings for `candidate` at `addr` (the certificate is checked
    /// against the host name, not the address).
    fn server(&self, c: &Candidate, addr: IpAddr, policy: TlsPolicy) -> Server {
        Server::new(addr.to_string(), c.port)
            .with_server_name(c.host.clone())
            .with_implicit_tls(c.implicit_tls)
            .with_policy(policy)
            .with_trust(self.trust.clone())
            .with_timeouts(*self.timeouts)
            .with_client_id(self.client_id.clone())
    }

    pub(super) async fn probe(&self, candidate: Candidate) -> Probed {
        let mut probed = Probed {
            candidate,
            address: None,
            tls: false,
            verified: false,
            verify_error: None,
            auth: Vec::new(),
            problem: None,
        };
        let c = &probed.candidate;
        let addrs = match self.resolver.addresses(&c.host).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                probed.problem = Some(format!("{} has no address", c.host));
                return probed;
            }
            Err(DnsError::NxDomain) => {
                probed.problem = Some(format!("{} does not exist", c.host));
                return probed;
            }
            Err(e) => {
                probed.problem = Some(format!("cannot look up {}: {e}", c.host));
                return probed;
            }
        };
        let mut attempts = Vec::new();
        for ip in addrs.into_iter().take(MAX_ADDRESSES) {
            // Required: a certificate that does not verify is still seen,
            // and named, rather than only refused.
            let server = self.server(c, ip, TlsPolicy::Required);
            let mut transport = match TcpTransport::connect(&server).await {
                Ok(t) => t,
                Err(TlsError::Unreachable { attempts: a, .. }) => {
                    attempts.extend(a.into_iter().map(|(addr, failure)| Attempt {
                        host: c.host.clone(),
                        addr,
                        local: None,
                        failure: Some(failure),
                        error: None,
                        tls: None,
                    }));
                    continue;
                }
                Err(e) => {
                    probed.problem = Some(advice::error(&e));
                    return probed;
                }
            };
            let peer = transport.peer();
            let Ok(mut client) = server.client(transport.now()) else {
                probed.problem = Some("cannot start a session".to_owned());
                return probed;
            };
            client.quit(transport.now());
            let report = drive(&mut client, &mut transport, &mut [], &mut |_: &Event| {}).await;
            if let Some(
                e @ (Error::ConnectionClosed {
                    phase: Phase::Greeting,
                }
                | Error::Timeout {
                    phase: Phase::Greeting,
                    ..
                }),
            ) = &report.error
            {
                attempts.push(Attempt {
                    host: c.host.clone(),
                    addr: peer,
                    local: transport.local(),
                    failure: None,
                    error: Some(e.clone()),
                    tls: None,
                });
                continue;
            }
            probed.address = Some(peer.ip().to_string());
            if let Some(t) = &report.tls {
                probed.tls = true;
                probed.verified = t.verified;
                probed.verify_error = t.verify_error.as_deref().map(setup_flags);
            }
            probed.auth = report
                .capabilities
                .as_ref()
                .map(|c| c.auth_mechanisms().to_vec())
                .unwrap_or_default();
            probed.problem = report
                .error
                .as_ref()
                .map(|e| ErrorReport::of_session(e).message);
            return probed;
        }
        probed.problem = Some(unreachable_words(&attempts, c.port));
        probed
    }

    /// Logs in on `c` under Certified, sends no mail.
    pub(super) async fn login(
        &self,
        c: &Candidate,
        address: Option<&str>,
        credentials: Credentials,
        auth: Option<AuthArg>,
        oauth_only: bool,
    ) -> Login {
        let user = credentials.username().to_owned();
        let mut login = Login {
            user,
            ok: false,
            mechanism: None,
            problem: None,
            message: None,
        };
        let Some(Ok(ip)) = address.map(str::parse::<IpAddr>) else {
            login.problem = Some("session");
            login.message = Some(format!("no address of {} to log in on", c.host));
            return login;
        };
        let server = self
            .server(c, ip, TlsPolicy::Certified)
            .with_credentials(credentials)
            .with_auth(mechanism(auth.unwrap_or(AuthArg::Auto)));
        let mut transport = match TcpTransport::connect(&server).await {
            Ok(t) => t,
            Err(e) => {
                login.problem = Some("session");
                login.message = Some(advice::error(&e));
                return login;
            }
        };
        let Ok(mut client) = server.client(transport.now()) else {
            login.problem = Some("session");
            login.message = Some("cannot start a session".to_owned());
            return login;
        };
        client.quit(transport.now());
        let mut mechanism_used = None;
        let report = drive(&mut client, &mut transport, &mut [], &mut |e: &Event| {
            if let Event::Authenticated(m) = e {
                mechanism_used = Some(m.name().to_owned());
            }
        })
        .await;
        login.mechanism = mechanism_used;
        match (&login.mechanism, &report.error) {
            (Some(_), _) => login.ok = true,
            (None, Some(e)) => {
                let (problem, message) = login_failure(e, &login.user, oauth_only);
                login.problem = Some(problem);
                login.message = Some(message);
            }
            (None, None) => {
                login.problem = Some("session");
                login.message = Some("the session ended without a login".to_owned());
            }
        }
        login
    }
}

/// A verification verdict with smtp-tls's advice said in setup's terms:
/// `setup` has no policy to weaken, only `--ca-file`.
pub(super) fn setup_flags(text: &str) -> String {
    text.replace(
        smtp_tls::UNKNOWN_ISSUER_ADVICE,
        "if it is your provider's own CA, give it with --ca-file",
    )
    .replace(
        smtp_tls::PINNING_ADVICE,
        "if it is the server's own, give that certificate with --ca-file (it is then pinned)",
    )
}

/// Every attempt failed to connect (or was cut before the greeting): the
/// port is probably blocked from here, said as direct delivery says it
/// for port 25, in submission's terms.
pub(super) fn unreachable_words(attempts: &[Attempt], port: u16) -> String {
    let tried: Vec<String> = attempts
        .iter()
        .map(|a| match (&a.failure, &a.error) {
            (Some(f), _) => format!("{}: {f}", a.addr),
            (None, Some(e)) => format!("{}: {}", a.addr, advice::error_text(e)),
            (None, None) => a.addr.to_string(),
        })
        .collect();
    if diagnose(attempts, [], port).is_some() {
        format!(
            "nothing answered on port {port} ({}): outbound port {port} is probably blocked \
             or intercepted by this network (some networks block it), or the server is down; \
             try the other port ({}), or another network",
            tried.join("; "),
            if port == 465 { 587 } else { 465 }
        )
    } else {
        format!("could not connect ({})", tried.join("; "))
    }
}

/// A failed login in plain words: which problem, and what to do.
pub(super) fn login_failure(e: &Error, user: &str, oauth_only: bool) -> (&'static str, String) {
    let said = advice::error_text(e);
    let Error::AuthenticationFailed { reply, .. } = e else {
        if oauth_only {
            return (
                "oauth2",
                format!(
                    "the provider wants OAuth2 (it offers only XOAUTH2/OAUTHBEARER): a password \
                     cannot log in; get an access token and use --auth xoauth2 ({said})"
                ),
            );
        }
        return ("session", format!("the login could not be tried: {said}"));
    };
    let text = reply.text().to_ascii_lowercase();
    let enhanced = reply.enhanced_code().map(|c| c.to_string());
    let code = reply.code();
    if enhanced.as_deref() == Some("5.7.9")
        || text.contains("application-specific")
        || text.contains("app password")
        || text.contains("app-specific")
    {
        return (
            "app-password",
            format!(
                "the provider wants an app password for {user}, not your usual one: create one \
                 in the account's security settings and use it ({said})"
            ),
        );
    }
    if oauth_only || text.contains("oauth") {
        return (
            "oauth2",
            format!(
                "the provider wants OAuth2 for {user}: a password cannot log in; get an access \
                 token and use --auth xoauth2 ({said})"
            ),
        );
    }
    if !code.is_permanent() {
        return (
            "temporary",
            format!("the server could not check the login just now; try again later ({said})"),
        );
    }
    (
        "wrong-password",
        format!(
            "wrong user name or password: the server refused the login as {user} ({said}); \
             check both (some providers want the full address as the user name)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use smtp_core::reply::{EnhancedCode, Reply, ReplyCode};
    use smtp_core::sasl::Mechanism;

    use super::*;

    fn refused(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Error {
        Error::AuthenticationFailed {
            mechanism: Mechanism::Plain,
            reply: Reply::new(
                ReplyCode::new(code).unwrap(),
                enhanced.and_then(|(c, s, d)| EnhancedCode::new(c, s, d)),
                vec![text.to_owned()],
            ),
            detail: None,
        }
    }

    #[test]
    fn a_refused_login_is_named_by_what_the_provider_wants() {
        let kind = |e: &Error, oauth_only| login_failure(e, "a@example.org", oauth_only).0;
        let wrong = refused(535, Some((5, 7, 8)), "authentication credentials invalid");
        assert_eq!(kind(&wrong, false), "wrong-password");
        let (_, words) = login_failure(&wrong, "a@example.org", false);
        assert!(words.contains("wrong user name or password"), "{words}");
        let app = refused(
            534,
            Some((5, 7, 9)),
            "Application-specific password required",
        );
        assert_eq!(kind(&app, false), "app-password");
        let app = refused(535, None, "Please use an app password for this account");
        assert_eq!(kind(&app, false), "app-password");
        let oauth = refused(535, None, "use OAuth to log in");
        assert_eq!(kind(&oauth, false), "oauth2");
        assert_eq!(kind(&wrong, true), "oauth2");
        let later = refused(454, Some((4, 7, 0)), "temporary authentication failure");
        assert_eq!(kind(&later, false), "temporary");
    }
}
