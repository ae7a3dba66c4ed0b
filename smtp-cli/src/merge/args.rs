//! `smtp send`'s mail merge and unsubscribe options, flattened into
//! [`SendArgs`](crate::cli::SendArgs).

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args, Default, Clone)]
pub(crate) struct MergeArgs {
    /// Mail merge: one message per row of this CSV file (UTF-8, a header
    /// row naming the columns); `{{column}}` in the template (or in
    /// --subject, --body, --body-html, --header) is the row's value.
    /// Implies --queue.
    #[arg(long, value_name = "CSV")]
    pub(crate) merge: Option<PathBuf>,
    /// --merge: the message to fill in (RFC 5322, MIME allowed: its
    /// text/plain and text/html parts are filled in, other parts not).
    #[arg(long, value_name = "FILE", requires = "merge")]
    pub(crate) template: Option<PathBuf>,
    /// --merge: the column holding each row's recipient.
    #[arg(long, value_name = "NAME", default_value = "email", requires = "merge")]
    pub(crate) to_column: String,
    /// --merge: leave out rows that cannot be sent (each still listed)
    /// instead of sending nothing.
    #[arg(long, requires = "merge")]
    pub(crate) skip_bad_rows: bool,
    /// --merge: print the first N messages as they would go (default 3),
    /// and send nothing.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "3",
          requires = "merge")]
    pub(crate) dry_run: Option<usize>,
    /// With --dry-run: write them to DIR/row-LINE.eml instead of standard
    /// output (new files, mode 0600; an existing file is never overwritten).
    #[arg(long, value_name = "DIR", requires = "dry_run")]
    pub(crate) dry_run_dir: Option<PathBuf>,
    /// HTML body of a composed message (with a text body: multipart/alternative).
    #[arg(long, value_name = "HTML", conflicts_with = "body_html_file")]
    pub(crate) body_html: Option<String>,
    /// HTML body of a composed message, from a file.
    #[arg(long, value_name = "FILE")]
    pub(crate) body_html_file: Option<PathBuf>,
    /// One-click unsubscribe (RFC 8058): add List-Unsubscribe with this
    /// https URL and List-Unsubscribe-Post (placeholders allowed with
    /// --merge, values percent-encoded).
    #[arg(long, value_name = "URL")]
    pub(crate) unsubscribe: Option<String>,
    /// Add this mailto address to List-Unsubscribe.
    #[arg(long, value_name = "ADDR")]
    pub(crate) unsubscribe_mailto: Option<String>,
}
