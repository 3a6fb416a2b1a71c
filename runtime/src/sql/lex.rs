//! Lexing a statement as each server does: split on the semicolons outside quotes and
//! comments, read into its keywords, in every reading the server's settings allow.

use sea_orm::DbBackend;

/// The statements of `sql` (without their `;`), skipping empty ones, read with backslash
/// escapes on MySQL and executable comments as comments.
#[cfg(test)]
pub(super) fn statements(backend: DbBackend, sql: &str) -> Statements<'_> {
    statements_read(backend, sql, Reading::default())
}

/// How a MySQL/MariaDB statement is read where the server's settings decide: with or
/// without backslash escapes (`NO_BACKSLASH_ESCAPES`, and `ANSI_QUOTES`, under which `"…"`
/// has none), executable comments (`/*! … */`, `/*M! … */`) as code or as comments. A
/// statement is refused if any reading refuses it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reading {
    pub(super) backslash: bool,
    pub(super) executable: bool,
}

impl Default for Reading {
    fn default() -> Self {
        Reading {
            backslash: true,
            executable: false,
        }
    }
}

/// Every reading of a statement on `backend` (one, but on MySQL/MariaDB).
pub(super) fn readings(backend: DbBackend) -> &'static [Reading] {
    const ALL: [Reading; 4] = [
        Reading {
            backslash: true,
            executable: true,
        },
        Reading {
            backslash: true,
            executable: false,
        },
        Reading {
            backslash: false,
            executable: true,
        },
        Reading {
            backslash: false,
            executable: false,
        },
    ];
    if backend == DbBackend::MySql {
        &ALL
    } else {
        &ALL[..1]
    }
}

/// The statements of `sql` as `reading` reads them.
pub(super) fn statements_read(backend: DbBackend, sql: &str, reading: Reading) -> Statements<'_> {
    Statements {
        sql,
        mysql: backend == DbBackend::MySql,
        postgres: backend == DbBackend::Postgres,
        reading,
        start: 0,
    }
}

pub(super) struct Statements<'a> {
    sql: &'a str,
    mysql: bool,
    postgres: bool,
    reading: Reading,
    start: usize,
}

impl<'a> Iterator for Statements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.sql.as_bytes();
        while self.start < bytes.len() {
            let start = self.start;
            let mut i = start;
            while i < bytes.len() && bytes[i] != b';' {
                i = match bytes[i] {
                    quote @ (b'\'' | b'"' | b'`') => {
                        let backslash = quote != b'`'
                            && ((self.mysql && self.reading.backslash)
                                || (self.postgres && quote == b'\'' && escape_string(bytes, i)));
                        skip_quoted(bytes, i + 1, quote, backslash)
                    }
                    b'-' if dash_comment(bytes, i, self.mysql) => skip_line(bytes, i),
                    b'#' if self.mysql => skip_line(bytes, i),
                    b'/' if bytes.get(i + 1) == Some(&b'*') => {
                        match executable_marker(&self.sql[i + 2..]) {
                            // Read as code: a `;` inside it ends a statement.
                            Some(skip) if self.mysql && self.reading.executable => i + 2 + skip,
                            _ => skip_block(bytes, i, self.postgres),
                        }
                    }
                    b'*' if self.mysql
                        && self.reading.executable
                        && bytes.get(i + 1) == Some(&b'/') =>
                    {
                        i + 2
                    }
                    // A `$` inside an identifier (`a$x$`) opens no dollar quote.
                    b'$' if self.postgres && (i == 0 || !identifier_byte(bytes[i - 1])) => {
                        skip_dollar_quoted(self.sql, i)
                    }
                    _ => i + 1,
                };
            }
            let end = i.min(bytes.len());
            self.start = end + 1;
            let statement = &self.sql[start..end];
            if !statement.trim().is_empty() {
                return Some(statement);
            }
        }
        None
    }
}

/// Whether `b` can be part of an identifier: ASCII letters, digits, `_`, `$`, and every
/// byte of a non-ASCII character (PostgreSQL and MySQL take letters of any script).
pub(super) fn identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// After `/*`: the length of MySQL's executable-comment marker (`!` or `M!` and a version
/// number), if the comment is one.
pub(super) fn executable_marker(after: &str) -> Option<usize> {
    let marker = if after.starts_with('!') {
        1
    } else if after.starts_with("M!") {
        2
    } else {
        return None;
    };
    let digits = after[marker..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    Some(marker + digits)
}

/// Whether the `-` at `i` opens a `--` comment: always on PostgreSQL and SQLite; on
/// MySQL/MariaDB only when a space or a control character (or the end) follows it, as the
/// server reads it (`1--1` is `1 - -1` there, and what follows is code).
pub(super) fn dash_comment(bytes: &[u8], i: usize, mysql: bool) -> bool {
    bytes.get(i + 1) == Some(&b'-')
        && (!mysql
            || bytes
                .get(i + 2)
                .is_none_or(|b| b.is_ascii_whitespace() || b.is_ascii_control()))
}

/// Whether the `'` at `i` opens PostgreSQL's escape string `E'…'` (backslash escapes):
/// the `E` stands alone. After a longer word it is a typed literal (`name '\'`), a
/// standard string in which a backslash is text.
pub(super) fn escape_string(bytes: &[u8], i: usize) -> bool {
    i > 0 && bytes[i - 1].eq_ignore_ascii_case(&b'e') && (i < 2 || !identifier_byte(bytes[i - 2]))
}

/// The index after the closing `quote` (a doubled quote is part of the text).
pub(super) fn skip_quoted(bytes: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if backslash => i += 2,
            b if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The index after the line a `--` or `#` comment at `i` ends with: at a line feed or a
/// carriage return, whichever comes first (PostgreSQL ends it at either).
pub(super) fn skip_line(bytes: &[u8], i: usize) -> usize {
    bytes[i..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map_or(bytes.len(), |end| i + end + 1)
}

/// The index after the `*/` closing the comment opened at `i` (nested on PostgreSQL).
pub(super) fn skip_block(bytes: &[u8], i: usize, nested: bool) -> usize {
    let (mut depth, mut j) = (1, i + 2);
    while j < bytes.len() {
        if bytes[j] == b'*' && bytes.get(j + 1) == Some(&b'/') {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else if nested && bytes[j] == b'/' && bytes.get(j + 1) == Some(&b'*') {
            depth += 1;
            j += 2;
        } else {
            j += 1;
        }
    }
    bytes.len()
}

/// After a PostgreSQL `$tag$…$tag$` string starting at `i`, or just past the `$` when it
/// opens none (a parameter such as `$1`).
pub(super) fn skip_dollar_quoted(sql: &str, i: usize) -> usize {
    let rest = &sql[i + 1..];
    let tag_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    if !rest[tag_len..].starts_with('$')
        || rest[..tag_len].starts_with(|c: char| c.is_ascii_digit())
    {
        return i + 1;
    }
    let tag = &sql[i..i + tag_len + 2];
    let body = i + tag.len();
    sql[body..]
        .find(tag)
        .map_or(sql.len(), |end| body + end + tag.len())
}

/// The keywords and identifiers of one statement, in order, outside comments and quotes.
/// With `executable`, the content of MySQL's `/*! … */` and `/*M! … */` comments is read
/// as code (the server runs it); without, as a comment.
#[cfg(test)]
pub(super) fn words(backend: DbBackend, statement: &str, executable: bool) -> Words<'_> {
    words_read(
        backend,
        statement,
        Reading {
            backslash: true,
            executable,
        },
    )
}

/// The words of `statement` as `reading` reads it.
pub(super) fn words_read(backend: DbBackend, statement: &str, reading: Reading) -> Words<'_> {
    Words {
        statement,
        backend,
        executable: reading.executable,
        backslash: reading.backslash,
        i: 0,
    }
}

#[derive(Clone)]
pub(super) struct Words<'a> {
    statement: &'a str,
    backend: DbBackend,
    executable: bool,
    backslash: bool,
    i: usize,
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.statement.as_bytes();
        let mysql = self.backend == DbBackend::MySql;
        while self.i < bytes.len() {
            let i = self.i;
            let b = bytes[i];
            if b.is_ascii_alphabetic() || b == b'_' {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$'))
                    .map_or(bytes.len(), |n| i + n);
                self.i = end;
                return Some(&self.statement[i..end]);
            }
            self.i = match b {
                b'\'' | b'"' | b'`' => {
                    let postgres = self.backend == DbBackend::Postgres;
                    let backslash = (mysql && self.backslash && b != b'`')
                        || (postgres && b == b'\'' && escape_string(bytes, i));
                    skip_quoted(bytes, i + 1, b, backslash)
                }
                b'-' if dash_comment(bytes, i, mysql) => skip_line(bytes, i),
                b'#' if mysql => skip_line(bytes, i),
                b'/' if bytes.get(i + 1) == Some(&b'*') => {
                    let marker = &self.statement[i + 2..];
                    let code = mysql && (marker.starts_with('!') || marker.starts_with("M!"));
                    if code && self.executable {
                        // Read on inside the comment, past its marker and version number.
                        let skip = if marker.starts_with('!') { 3 } else { 4 };
                        let digits = bytes[i + skip..]
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .count();
                        i + skip + digits
                    } else {
                        skip_block(bytes, i, self.backend == DbBackend::Postgres)
                    }
                }
                b'*' if bytes.get(i + 1) == Some(&b'/') => i + 2, // the end of an executable comment
                b'0'..=b'9' => bytes[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'.'))
                    .map_or(bytes.len(), |n| i + n),
                _ => i + 1,
            };
        }
        None
    }
}
