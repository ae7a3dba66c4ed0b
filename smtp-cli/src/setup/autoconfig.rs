//! A domain's autoconfiguration document (`config-v1.1.xml`, as Thunderbird
//! publishes and reads it): only its SMTP servers are read, strictly.
//!
//! ```xml
//! <clientConfig version="1.1">
//!   <emailProvider id="example.org">
//!     <outgoingServer type="smtp">
//!       <hostname>smtp.example.org</hostname>
//!       <port>465</port>
//!       <socketType>SSL</socketType>
//!       <authentication>password-cleartext</authentication>
//!       <username>%EMAILADDRESS%</username>
//!     </outgoingServer>
//!   </emailProvider>
//! </clientConfig>
//! ```
//!
//! Strict: UTF-8; no DOCTYPE (so no entity of the document's own) and no
//! processing instruction; the root is `clientConfig`; an `outgoingServer`
//! of type `smtp` has exactly one `hostname`, `port` and `socketType`,
//! the host a DNS name (after the `%EMAILDOMAIN%`-style placeholders), the
//! port a number, the socket type `SSL`, `STARTTLS` or `plain` (plain is
//! left out: setup only uses TLS). Nesting is bounded.

use quick_xml::Reader;
use quick_xml::events::Event;

/// Deepest nesting read.
const MAX_DEPTH: usize = 16;

/// One SMTP server the document names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) hostname: String,
    pub(crate) port: u16,
    pub(crate) implicit_tls: bool,
    /// `password-cleartext`, `OAuth2`, … as given.
    pub(crate) authentication: Vec<String>,
    /// The user name, placeholders filled in.
    pub(crate) username: Option<String>,
}

/// The fields of one `outgoingServer` being read.
#[derive(Default)]
struct Fields {
    hostname: Vec<String>,
    port: Vec<String>,
    socket_type: Vec<String>,
    authentication: Vec<String>,
    username: Vec<String>,
}

/// The SMTP servers of the document, in its order, for `address`.
pub(crate) fn parse(xml: &[u8], address: &str) -> Result<Vec<Outgoing>, String> {
    let text = std::str::from_utf8(xml).map_err(|_| "the document is not UTF-8".to_owned())?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<String> = Vec::new();
    let mut current: Option<Fields> = None;
    let mut servers = Vec::new();
    let mut text_of_field = String::new();
    let mut saw_root = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("not well-formed XML: {e}"))?;
        match event {
            Event::Decl(_) | Event::Comment(_) => {}
            Event::DocType(_) => return Err("a DOCTYPE is not allowed".into()),
            Event::PI(_) => return Err("a processing instruction is not allowed".into()),
            Event::Start(e) => {
                let name = e.name().as_ref().to_owned();
                if stack.is_empty() {
                    if saw_root || name != "clientConfig" {
                        return Err(format!("the root element is <{name}>, not <clientConfig>"));
                    }
                    saw_root = true;
                }
                if stack.len() >= MAX_DEPTH {
                    return Err("the document nests too deep".into());
                }
                if name == "outgoingServer"
                    && stack.last().map(String::as_str) == Some("emailProvider")
                {
                    let kind = e
                        .try_get_attribute("type")
                        .map_err(|e| format!("bad attribute: {e}"))?
                        .map(|a| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .map(|v| v.into_owned())
                        })
                        .transpose()
                        .map_err(|e| format!("bad attribute: {e}"))?;
                    if kind.as_deref() == Some("smtp") {
                        current = Some(Fields::default());
                    }
                }
                text_of_field.clear();
                stack.push(name);
            }
            Event::Empty(e) => {
                let name = e.name().as_ref().to_owned();
                if stack.is_empty() {
                    return Err(format!("the root element is <{name}/>, with nothing in it"));
                }
            }
            Event::Text(t) => text_of_field.push_str(&t.xml10_content()),
            Event::CData(c) => text_of_field.push_str(&c.xml10_content()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => match &*r.xml10_content() {
                        "amp" => "&".into(),
                        "lt" => "<".into(),
                        "gt" => ">".into(),
                        "quot" => "\"".into(),
                        "apos" => "'".into(),
                        other => return Err(format!("unknown entity &{other};")),
                    },
                    Err(e) => return Err(format!("bad character reference: {e}")),
                };
                text_of_field.push_str(&resolved);
            }
            Event::End(_) => {
                let Some(name) = stack.pop() else {
                    return Err("an end tag without a start".into());
                };
                let value = std::mem::take(&mut text_of_field).trim().to_owned();
                let parent = stack.last().map(String::as_str);
                if let (Some(fields), Some("outgoingServer")) = (current.as_mut(), parent) {
                    match name.as_str() {
                        "hostname" => fields.hostname.push(value),
                        "port" => fields.port.push(value),
                        "socketType" => fields.socket_type.push(value),
                        "authentication" => fields.authentication.push(value),
                        "username" => fields.username.push(value),
                        _ => {}
                    }
                } else if name == "outgoingServer"
                    && let Some(fields) = current.take()
                    && let Some(server) = server(fields, address)?
                {
                    servers.push(server);
                }
            }
            Event::Eof => break,
        }
    }
    if !saw_root {
        return Err("no <clientConfig> element".into());
    }
    if !stack.is_empty() {
        return Err(format!("<{}> is not closed", stack.join("><")));
    }
    Ok(servers)
}

/// One server from its fields; `None` for a plaintext one.
fn server(f: Fields, address: &str) -> Result<Option<Outgoing>, String> {
    let one = |values: Vec<String>, what: &str| -> Result<String, String> {
        match <[String; 1]>::try_from(values) {
            Ok([v]) => Ok(v),
            Err(v) => Err(format!(
                "an outgoingServer has {} <{what}> elements, not one",
                v.len()
            )),
        }
    };
    let hostname = fill(&one(f.hostname, "hostname")?, address);
    let port = one(f.port, "port")?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("the port {port:?} is not a port number"))?;
    let implicit_tls = match one(f.socket_type, "socketType")?.as_str() {
        "SSL" => true,
        "STARTTLS" => false,
        "plain" => return Ok(None),
        other => return Err(format!("unknown socketType {other:?}")),
    };
    if !is_host_name(&hostname) {
        return Err(format!("the hostname {hostname:?} is not a DNS name"));
    }
    Ok(Some(Outgoing {
        hostname: hostname.to_ascii_lowercase(),
        port,
        implicit_tls,
        authentication: f.authentication,
        username: f.username.into_iter().next().map(|u| fill(&u, address)),
    }))
}

/// The placeholders of the format, filled in for `address`.
fn fill(template: &str, address: &str) -> String {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    template
        .replace("%EMAILADDRESS%", address)
        .replace("%EMAILLOCALPART%", local)
        .replace("%EMAILDOMAIN%", domain)
}

/// LDH labels of 1 to 63 octets, at least two of them, at most 253 octets.
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= 253
        && name.split('.').count() >= 2
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "alice@example.org";

    fn doc(servers: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?>\n<clientConfig version=\"1.1\"><emailProvider id=\"example.org\">\
             <domain>example.org</domain>\
             <incomingServer type=\"imap\"><hostname>imap.example.org</hostname><port>993</port>\
             <socketType>SSL</socketType></incomingServer>{servers}</emailProvider></clientConfig>"
        )
    }

    #[test]
    fn the_smtp_servers_are_read_with_placeholders_filled_in() {
        let xml = doc(
            "<outgoingServer type=\"smtp\"><hostname>smtp.%EMAILDOMAIN%</hostname><port>465</port>\
             <socketType>SSL</socketType><authentication>password-cleartext</authentication>\
             <authentication>OAuth2</authentication><username>%EMAILADDRESS%</username></outgoingServer>\
             <!-- a comment --><outgoingServer type=\"smtp\"><hostname>smtp2.example.org</hostname>\
             <port>587</port><socketType>STARTTLS</socketType></outgoingServer>\
             <outgoingServer type=\"smtp\"><hostname>plain.example.org</hostname><port>25</port>\
             <socketType>plain</socketType></outgoingServer>",
        );
        let got = parse(xml.as_bytes(), A).unwrap();
        assert_eq!(
            got,
            [
                Outgoing {
                    hostname: "smtp.example.org".into(),
                    port: 465,
                    implicit_tls: true,
                    authentication: vec!["password-cleartext".into(), "OAuth2".into()],
                    username: Some(A.into()),
                },
                Outgoing {
                    hostname: "smtp2.example.org".into(),
                    port: 587,
                    implicit_tls: false,
                    authentication: vec![],
                    username: None,
                }
            ]
        );
    }

    #[test]
    fn anything_malformed_or_unexpected_is_refused() {
        let server = |host: &str, port: &str, socket: &str| {
            doc(&format!(
                "<outgoingServer type=\"smtp\"><hostname>{host}</hostname><port>{port}</port>\
                 <socketType>{socket}</socketType></outgoingServer>"
            ))
        };
        for bad in [
            server("smtp.example.org", "99999", "SSL"),
            server("smtp.example.org", "465", "TLS"),
            server("smtp example.org", "465", "SSL"),
            server("smtp.example.org/x", "465", "SSL"),
            server("smtp.example.org&unknown;", "465", "SSL"),
            doc(
                "<outgoingServer type=\"smtp\"><port>465</port><socketType>SSL</socketType></outgoingServer>",
            ),
            doc(
                "<outgoingServer type=\"smtp\"><hostname>a.example</hostname><hostname>b.example</hostname><port>465</port><socketType>SSL</socketType></outgoingServer>",
            ),
            "<!DOCTYPE x [<!ENTITY e \"smtp.evil.example\">]><clientConfig/>".to_owned(),
            "<other/>".to_owned(),
            "<clientConfig><emailProvider>".to_owned(),
            "<clientConfig></emailProvider></clientConfig>".to_owned(),
            "not xml at all".to_owned(),
            format!(
                "<clientConfig>{}</clientConfig>",
                "<a>".repeat(20) + &"</a>".repeat(20)
            ),
        ] {
            assert!(parse(bad.as_bytes(), A).is_err(), "accepted: {bad}");
        }
        assert!(parse(b"<clientConfig>\xff</clientConfig>", A).is_err());
        // Character references are fine.
        let ok = server("smtp&#46;example.org", "465", "SSL");
        assert_eq!(
            parse(ok.as_bytes(), A).unwrap()[0].hostname,
            "smtp.example.org"
        );
    }
}
