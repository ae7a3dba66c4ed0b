//! A message composed from options (`--subject`, `--body`, `--attach`,
//! `--cc`, `--header`), in memory, with each header field once.

use std::path::PathBuf;

use smtp_core::address::Mailbox;

use crate::fail::Failure;

/// An address as a composed header field writes it. An IDN domain with an
/// ASCII local part goes as A-labels (`user@xn--bcher-kva.example`), as in
/// the envelope, so the header section stays 7-bit and needs no SMTPUTF8 —
/// unless `utf8` (the message uses SMTPUTF8 anyway: an address it names has
/// a UTF-8 local part), when it stays as given. An ASCII address, and one
/// that does not parse (the envelope refuses it, saying why), stay as given.
pub(crate) fn header_address(address: &str, utf8: bool) -> String {
    match Mailbox::parse(address) {
        Ok(m) if !utf8 && !address.is_ascii() => m.to_string(),
        _ => address.to_owned(),
    }
}

/// True when `address` has a UTF-8 local part, so a message naming it is a
/// SMTPUTF8 one (RFC 6531).
pub(crate) fn needs_smtputf8(address: &str) -> bool {
    Mailbox::parse(address).is_ok_and(|m| m.needs_smtputf8())
}

/// `--header` options for a composed message, sorted: the fields the
/// composer writes itself come out as their options (To, Cc and Bcc as
/// recipients, Subject as the subject), so no field is written twice; the
/// rest go into the message as given, Date and Message-ID under the names
/// that keep the composer from adding its own.
#[derive(Debug, Default)]
pub(crate) struct HeaderFields {
    pub(crate) to: Vec<String>,
    pub(crate) cc: Vec<String>,
    pub(crate) bcc: Vec<String>,
    pub(crate) subject: Option<String>,
    pub(crate) rest: Vec<(String, String)>,
}

impl HeaderFields {
    pub(crate) fn read(headers: &[String]) -> Result<Self, Failure> {
        let mut fields = Self::default();
        for h in headers {
            let (name, value) = h.split_once(':').ok_or_else(|| {
                Failure::usage(format!("--header {h:?}: write it as \"Name: value\""))
            })?;
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(Failure::usage(format!(
                    "--header {h:?}: {name:?} is not a header name"
                )));
            }
            if value.contains(['\r', '\n']) {
                return Err(Failure::usage(format!(
                    "--header {name}: the value cannot hold line breaks"
                )));
            }
            let value = value.trim().to_owned();
            let list = |v: &str| -> Vec<String> {
                v.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            match name.to_ascii_lowercase().as_str() {
                "to" => fields.to.extend(list(&value)),
                "cc" => fields.cc.extend(list(&value)),
                "bcc" => fields.bcc.extend(list(&value)),
                "subject" if fields.subject.is_none() => fields.subject = Some(value),
                "subject" => return Err(Failure::usage("--header 'Subject: …' given twice")),
                "from" | "sender" => {
                    return Err(Failure::usage(format!(
                        "--header {name}: give the sender with --from \"Name <address>\""
                    )));
                }
                "mime-version" | "content-type" | "content-transfer-encoding" => {
                    return Err(Failure::usage(format!(
                        "--header {name}: the composer writes the MIME structure; use \
                         --body, --body-file and --attach (or send a message file)"
                    )));
                }
                "date" => fields.rest.push(("Date".to_owned(), value)),
                "message-id" => fields.rest.push(("Message-ID".to_owned(), value)),
                _ => fields.rest.push((name.to_owned(), value)),
            }
        }
        Ok(fields)
    }
}

/// What a composed message is made of (`--subject`, `--body`, `--attach`,
/// `--header`, and the addresses).
pub(crate) struct Composition<'a> {
    pub(crate) from: &'a str,
    pub(crate) full_name: Option<&'a str>,
    pub(crate) to: &'a [String],
    pub(crate) cc: &'a [String],
    pub(crate) subject: &'a str,
    pub(crate) body: &'a str,
    /// An HTML body: with a text body, the two as multipart/alternative.
    pub(crate) html: Option<&'a str>,
    /// The subject is in `headers`, written as given (a merge's template,
    /// whose placeholders an encoding would hide).
    pub(crate) raw_subject: bool,
    pub(crate) attachments: &'a [PathBuf],
    pub(crate) headers: &'a [(String, String)],
}

/// Composes the message, in memory.
pub(crate) fn compose(c: &Composition<'_>) -> Result<Vec<u8>, Failure> {
    let Composition {
        from,
        full_name,
        to,
        cc,
        subject,
        body,
        html,
        raw_subject,
        attachments,
        headers,
    } = *c;
    let utf8 = [from]
        .into_iter()
        .chain(to.iter().chain(cc).map(String::as_str))
        .any(needs_smtputf8);
    let from = header_address(from, utf8);
    let from_addr: mail_builder::headers::address::Address<'_> = match full_name {
        Some(n) => (n, from.as_str()).into(),
        None => from.as_str().into(),
    };
    let to: Vec<String> = to.iter().map(|a| header_address(a, utf8)).collect();
    let cc: Vec<String> = cc.iter().map(|a| header_address(a, utf8)).collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let cc: Vec<&str> = cc.iter().map(String::as_str).collect();
    let mut builder = mail_builder::MessageBuilder::new().from(from_addr);
    if !raw_subject {
        builder = builder.subject(subject);
    }
    builder = match html {
        // Only an HTML body: no empty text part beside it.
        Some(h) if body.is_empty() => builder.html_body(h),
        Some(h) => builder.text_body(body).html_body(h),
        None => builder.text_body(body),
    };
    builder = if to.is_empty() {
        // Only hidden recipients: an empty group, as MTAs write it, rather
        // than an empty To: that some receivers refuse.
        builder.header(
            "To",
            mail_builder::headers::raw::Raw::new("undisclosed-recipients:;"),
        )
    } else {
        builder.to(to)
    };
    if !cc.is_empty() {
        builder = builder.cc(cc);
    }
    for (name, value) in headers {
        builder = builder.header(
            name.clone(),
            mail_builder::headers::raw::Raw::new(value.clone()),
        );
    }
    for path in attachments {
        let bytes = std::fs::read(path).map_err(|e| Failure::no_input(path, &e))?;
        let filename = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        // The type from the name, as mail programs do (report.pdf is a
        // PDF); octet-stream only when the name says nothing.
        let content_type = mime_guess::from_path(path).first_or_octet_stream();
        builder = builder.attachment(content_type.essence_str().to_owned(), filename, bytes);
    }
    builder
        .write_to_vec()
        .map_err(|e| Failure::io("cannot compose the message", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_addresses_carry_idn_domains_as_a_labels_unless_the_message_is_utf8() {
        for (given, utf8, written) in [
            ("user@bücher.example", false, "user@xn--bcher-kva.example"),
            ("User@BÜCHER.example", false, "User@xn--bcher-kva.example"),
            ("<user@bücher.example>", false, "user@xn--bcher-kva.example"),
            ("user@bücher.example", true, "user@bücher.example"),
            ("Bob@Example.ORG", false, "Bob@Example.ORG"),
            ("user@xn--a.example", false, "user@xn--a.example"),
            ("not an address ü", false, "not an address ü"),
        ] {
            assert_eq!(header_address(given, utf8), written, "{given} {utf8}");
        }
        assert!(needs_smtputf8("jörg@example.org"));
        assert!(!needs_smtputf8("user@bücher.example"));
        assert!(!needs_smtputf8("nonsense"));
    }
}
