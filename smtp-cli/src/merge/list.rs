//! The recipient list: a CSV file with a header row, in UTF-8. Rows are
//! named by the line they start on, as an editor shows it (the header
//! row is line 1), whatever the line ends: LF, CRLF or CR alone.

use std::path::Path;

use crate::fail::Failure;

/// The list as read.
#[derive(Debug)]
pub(crate) struct List {
    /// The header row's names (trimmed).
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Row>,
}

/// One data row.
#[derive(Debug)]
pub(crate) struct Row {
    /// The line it starts on (the header row is line 1).
    pub(crate) line: u64,
    /// Its fields, as many as it has.
    pub(crate) values: Vec<String>,
}

impl List {
    /// Reads `bytes` (the file at `path`).
    pub(crate) fn read(path: &Path, bytes: &[u8]) -> Result<Self, Failure> {
        let name = path.display();
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(bytes);
        let utf8 = |e: csv::Error| match e.kind() {
            csv::ErrorKind::Utf8 { pos, .. } => Failure::data(format!(
                "{name}: line {} is not UTF-8: save the list as UTF-8 (CSV UTF-8 in a spreadsheet)",
                pos.as_ref().map_or(0, csv::Position::line)
            )),
            _ => Failure::data(format!("{name}: {e}")),
        };
        let columns: Vec<String> = reader
            .headers()
            .map_err(utf8)?
            .iter()
            .map(|c| c.trim().to_owned())
            .collect();
        if columns.iter().all(String::is_empty) {
            return Err(Failure::data(format!(
                "{name}: no header row: its first line names the columns (email,name,…)"
            )));
        }
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].contains(c) {
                return Err(Failure::data(format!(
                    "{name}: the column {c:?} is named twice in the header row"
                )));
            }
        }
        let mut rows = Vec::new();
        // The line a record starts on, from its byte offset (the reader's
        // own line count stands before the blank lines it skipped).
        let (mut counted_to, mut line) = (0usize, 1u64);
        for record in reader.records() {
            let record = record.map_err(utf8)?;
            let mut start = record
                .position()
                .map_or(counted_to, |p| {
                    usize::try_from(p.byte()).unwrap_or(usize::MAX)
                })
                .min(bytes.len());
            while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
                start += 1;
            }
            let start = start.max(counted_to);
            line += line_ends(&bytes[counted_to..start]);
            counted_to = start;
            // A blank line is no row.
            if record.iter().all(|f| f.trim().is_empty()) && record.len() <= 1 {
                continue;
            }
            rows.push(Row {
                line,
                values: record.iter().map(str::to_owned).collect(),
            });
        }
        Ok(Self { columns, rows })
    }

    /// The index of `column`.
    pub(crate) fn index(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == column)
    }
}

/// The line ends in `bytes`: each LF, CRLF, and CR not followed by LF.
fn line_ends(bytes: &[u8]) -> u64 {
    let lf = memchr::memchr_iter(b'\n', bytes).count();
    let cr_alone = memchr::memchr_iter(b'\r', bytes)
        .filter(|&i| bytes.get(i + 1) != Some(&b'\n'))
        .count();
    (lf + cr_alone) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_named_by_their_line_in_the_file() {
        let l = List::read(
            Path::new("l.csv"),
            b"\xef\xbb\xbfemail, name\na@x.org,A\n\n\"b@x.org\",\"B\nwith a line\"\nc@x.org,C\n",
        )
        .unwrap();
        assert_eq!(l.columns, ["email", "name"]);
        let lines: Vec<u64> = l.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 4, 6]);
        assert_eq!(l.rows[1].values[1], "B\nwith a line");
    }

    #[test]
    fn rows_are_named_by_their_line_whatever_the_line_ends() {
        let lf = "email,name\na@x.org,A\n\n\"b@x.org\",\"B\nwith a line\"\nc@x.org,C\n";
        for (ends, text) in [
            ("LF", lf.to_owned()),
            ("CRLF", lf.replace('\n', "\r\n")),
            ("CR", lf.replace('\n', "\r")),
        ] {
            let l = List::read(Path::new("l.csv"), text.as_bytes()).unwrap();
            let lines: Vec<u64> = l.rows.iter().map(|r| r.line).collect();
            assert_eq!(lines, [2, 4, 6], "{ends}");
            assert_eq!(l.rows[2].values, ["c@x.org", "C"], "{ends}");
        }
    }

    #[test]
    fn a_list_not_in_utf8_is_refused_saying_so() {
        let e = List::read(Path::new("l.csv"), b"email,name\na@x.org,J\xf6rg\n").unwrap_err();
        assert_eq!(e.code, crate::fail::EX_DATAERR);
        assert!(e.message.contains("line 2 is not UTF-8"), "{}", e.message);
    }
}
