//! The results: a table, `--json`, JUnit XML, and the case list.

use std::fmt::Write as _;
use std::time::Duration;

use super::cases::Case;
use crate::terminal::{one_line, printable};

/// A case's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    /// What the client did wrong, in one line.
    Fail(String),
    /// Why the case does not apply to this client.
    Skip(String),
}

impl Verdict {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Self::Pass => Kind::Pass,
            Self::Fail(_) => Kind::Fail,
            Self::Skip(_) => Kind::Skip,
        }
    }

    fn detail(&self) -> &str {
        match self {
            Self::Pass => "",
            Self::Fail(s) | Self::Skip(s) => s,
        }
    }
}

/// A verdict without its detail: what a profile pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    Pass,
    Fail,
    Skip,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One case's result.
#[derive(Debug)]
pub(crate) struct CaseResult {
    pub(crate) id: &'static str,
    pub(crate) verdict: Verdict,
    /// The profile's pinned verdict, if it has one.
    pub(crate) expected: Option<Kind>,
    /// The client's exit status (`hung`, `signal N`), when it ran.
    pub(crate) exit: Option<String>,
    pub(crate) elapsed: Duration,
    /// The end of the client's output.
    pub(crate) output: String,
    /// The RFC sections (or CVEs) behind the case.
    pub(crate) reference: &'static str,
    /// What a passing check found (the server checker's facts), shown
    /// where a failure's detail would be.
    pub(crate) note: String,
    /// How to fix a FAIL (the server checker), shown under it.
    pub(crate) hint: String,
}

impl CaseResult {
    /// The verdict differs from the profile's pin (a missing pin is `pass`).
    pub(crate) fn unexpected(&self) -> bool {
        self.verdict.kind() != self.expected.unwrap_or(Kind::Pass)
    }
}

/// What is under test: an SMTP `client` or `server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }

    /// How a skip is called: a client's case is skipped; a server's
    /// check does not apply (n/a).
    fn skip(self) -> &'static str {
        match self {
            Self::Client => "skip",
            Self::Server => "n/a",
        }
    }
}

impl CaseResult {
    fn shown(&self) -> &str {
        match &self.verdict {
            Verdict::Pass => &self.note,
            v => v.detail(),
        }
    }
}

/// The table: case, verdict, one line. Every text in it that a server or
/// client chose (reply text, output, the command line) is made
/// printable: no control character reaches the terminal.
pub(crate) fn table(role: Role, subject: &str, results: &[CaseResult], pinned: bool) -> String {
    let shown = |t: &str| printable(&one_line(t)).into_owned();
    let mut out = format!(
        "conformance of `{}` as an SMTP {}\n\n",
        shown(subject),
        role.name()
    );
    let width = results.iter().map(|r| r.id.len()).max().unwrap_or(4);
    for r in results {
        let mark = if pinned && r.unexpected() {
            format!("  (pinned: {})", r.expected.unwrap_or(Kind::Pass).name())
        } else {
            String::new()
        };
        let kind = match r.verdict.kind() {
            Kind::Skip => role.skip(),
            k => k.name(),
        };
        let line = format!("{:width$}  {kind:4}  {}{mark}", r.id, shown(r.shown()));
        let _ = writeln!(out, "{}", line.trim_end());
        if r.verdict.kind() == Kind::Fail && !r.hint.is_empty() {
            let _ = writeln!(out, "{:width$}        fix: {}", "", shown(&r.hint));
        }
    }
    let count = |k: Kind| results.iter().filter(|r| r.verdict.kind() == k).count();
    let _ = write!(
        out,
        "\n{} passed, {} failed, {} {}",
        count(Kind::Pass),
        count(Kind::Fail),
        count(Kind::Skip),
        if role == Role::Client {
            "skipped"
        } else {
            "n/a"
        }
    );
    if pinned {
        let off = results.iter().filter(|r| r.unexpected()).count();
        let _ = write!(out, "; {off} differ from the profile's pinned verdicts");
    }
    out.push('\n');
    out
}

/// `--json`: one object.
pub(crate) fn json(role: Role, subject: &str, results: &[CaseResult]) -> serde_json::Value {
    let cases: Vec<_> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "verdict": r.verdict.kind().name().to_ascii_lowercase(),
                "detail": r.shown(),
                "reference": r.reference,
                "expected": r.expected.map(|k| k.name().to_ascii_lowercase()),
                "exit": r.exit,
                "elapsed_ms": r.elapsed.as_millis() as u64,
                "output": r.output,
                "fix": (!r.hint.is_empty()).then_some(&r.hint),
                "pinned": r.expected.map(|k| k.name().to_ascii_lowercase()),
                "matches_pin": !r.unexpected(),
            })
        })
        .collect();
    let count = |k: Kind| results.iter().filter(|r| r.verdict.kind() == k).count();
    serde_json::json!({
        role.name(): subject,
        "passed": count(Kind::Pass),
        "failed": count(Kind::Fail),
        "skipped": count(Kind::Skip),
        "differ": results.iter().filter(|r| r.unexpected()).count(),
        "cases": cases,
    })
}

/// JUnit XML (the common subset CI systems read): one `<testsuite>`, a
/// `<testcase>` per case with `<failure>` or `<skipped>`.
pub(crate) fn junit(role: Role, subject: &str, results: &[CaseResult], pinned: bool) -> String {
    let what = role.name();
    let shown: Vec<Verdict> = results.iter().map(|r| junit_verdict(r, pinned)).collect();
    let count = |k: Kind| shown.iter().filter(|v| v.kind() == k).count();
    let total: f64 = results.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"smtp conformance {what}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total:.3}\">",
        results.len(),
        count(Kind::Fail),
        count(Kind::Skip)
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{total:.3}\">",
        xml(subject),
        results.len(),
        count(Kind::Fail),
        count(Kind::Skip)
    );
    for (r, verdict) in results.iter().zip(&shown) {
        let _ = write!(
            x,
            "    <testcase classname=\"smtp.conformance.{what}\" name=\"{}\" time=\"{:.3}\"",
            xml(r.id),
            r.elapsed.as_secs_f64()
        );
        match verdict {
            Verdict::Pass => x.push_str("/>\n"),
            Verdict::Fail(why) => {
                let body = if r.hint.is_empty() {
                    why.clone()
                } else {
                    format!("{why}\nfix: {}", r.hint)
                };
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{}\" type=\"conformance\">{}</failure>\n      <system-out>{}</system-out>\n    </testcase>",
                    xml(why),
                    xml(&body),
                    xml(&r.output)
                );
            }
            Verdict::Skip(why) => {
                let _ = writeln!(
                    x,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    xml(why)
                );
            }
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// How a case shows in JUnit. With `--pinned`, a case whose verdict
/// matches a pinned FAIL or skip is `<skipped message="pinned: …">` (CI
/// shows it, and the build stays green); a verdict that differs from its
/// pin is a `<failure>`, a pass included ("update the pin").
fn junit_verdict(r: &CaseResult, pinned: bool) -> Verdict {
    let pin = r.expected.unwrap_or(Kind::Pass);
    match (&r.verdict, pinned) {
        (v, false) => v.clone(),
        (Verdict::Pass, true) if pin == Kind::Pass => Verdict::Pass,
        (Verdict::Pass, true) => Verdict::Fail(format!(
            "passes now, but the profile pins {}: update the pin",
            pin.name()
        )),
        (v, true) if v.kind() == pin => {
            Verdict::Skip(format!("pinned: {}: {}", pin.name(), v.detail()))
        }
        (Verdict::Fail(why), true) => Verdict::Fail(format!("{why} (pinned: {})", pin.name())),
        (Verdict::Skip(why), true) => Verdict::Fail(format!(
            "skipped ({why}), but the profile pins {}",
            pin.name()
        )),
    }
}

/// `text` fit for an XML 1.0 attribute value or element text: `&`, `<`,
/// `>` and both quotes escaped, tab, CR and LF as character references
/// (an attribute keeps them), and every character XML 1.0 cannot hold (C0
/// controls but those three, U+FFFE, U+FFFF, lone surrogates cannot occur
/// in a `str`) replaced by U+FFFD. Every text the JUnit file holds goes
/// through it.
pub(crate) fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push(char::REPLACEMENT_CHARACTER),
            // Allowed in XML 1.0 but discouraged, and terminal controls
            // when the file is shown: C1 and DEL.
            '\u{7f}'..='\u{9f}' => out.push(char::REPLACEMENT_CHARACTER),
            c => out.push(c),
        }
    }
    out
}

/// `--list`: the case table in Markdown (docs/conformance.md holds it).
pub(crate) fn list(cases: &[&Case]) -> String {
    let mut out = String::from("| case | the server | passes when | RFC |\n|---|---|---|---|\n");
    for c in cases {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            c.id,
            c.server_does.replace('|', "\\|"),
            c.passes.replace('|', "\\|"),
            c.rfc
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_holds_only_what_xml_1_0_allows() {
        let nasty = "a\u{1}b\u{b}c\u{1b}[31m\u{7}\u{fffe}\u{ffff}]]><x a=\"1\">&'\r\n\t\u{85}";
        let x = xml(nasty);
        assert_eq!(
            x,
            "a\u{fffd}b\u{fffd}c\u{fffd}[31m\u{fffd}\u{fffd}\u{fffd}]]&gt;&lt;x a=&quot;1&quot;&gt;&amp;&apos;&#13;&#10;&#9;\u{fffd}"
        );
        let doc = format!("<r a=\"{x}\">{x}</r>");
        let mut reader = quick_xml::Reader::from_str(&doc);
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("{e}: {doc}"),
            }
        }
    }

    #[test]
    fn the_table_shows_no_control_character() {
        let r = CaseResult {
            id: "x",
            verdict: Verdict::Fail("554 \u{1b}[31mRED\u{7}\u{1b}]0;title\u{7}\r\nnext".into()),
            expected: None,
            exit: None,
            elapsed: Duration::ZERO,
            output: String::new(),
            reference: "",
            note: String::new(),
            hint: String::new(),
        };
        let t = table(Role::Client, "evil\u{1b}[2J", &[r], false);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 5, "{t}");
    }
}
