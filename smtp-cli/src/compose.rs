//! A message composed from options (`--subject`, `--body`, `--attach`,
//! `--cc`, `--header`), in memory, with each header field once.

use std::path::PathBuf;

use crate::fail::Failure;

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
        attachments,
        headers,
    } = *c;
    let from_addr: mail_builder::headers::address::Address<'_> = match full_name {
        Some(n) => (n, from).into(),
        None => from.into(),
    };
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let cc: Vec<&str> = cc.iter().map(String::as_str).collect();
    let mut builder = mail_builder::MessageBuilder::new()
        .from(from_addr)
        .subject(subject)
        .text_body(body);
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
