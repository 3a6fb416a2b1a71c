//! What safe-db reads of a statement's text before it is sent: whether it would end the
//! transaction it is sent in, and whether it writes. It only reads: the statement is sent
//! as the caller wrote it.
//!
//! A string may hold several statements (`execute_unprepared("a; b")`): it is split on the
//! semicolons outside quotes and comments, and each statement is read from its leading
//! keywords. Quotes follow each database's rules (doubled quotes everywhere, backslash
//! escapes on MySQL and in PostgreSQL's `E'…'`, PostgreSQL's `$tag$…$tag$`), comments too
//! (`--`, `/* */`, nested on PostgreSQL, `#` on MySQL). MySQL's executable comments
//! (`/*! … */`, `/*M! … */`) are read both ways, as code and as a comment, and a statement
//! is refused if either reading is.

mod lex;
#[cfg(test)]
mod tests;

use sea_orm::DbBackend;

use lex::{readings, statements_read, words_read};
#[cfg(test)]
use lex::{statements, words};

fn is(word: Option<&&str>, keyword: &str) -> bool {
    word.is_some_and(|w| w.eq_ignore_ascii_case(keyword))
}

/// Why `sql` must not be sent inside a managed transaction on `backend`, if it must not:
/// one of its statements would end the transaction, or break sqlx's savepoint stack
/// (written by hand on every database), or make MySQL/MariaDB commit it implicitly (DDL
/// and the others of its "implicit commit" list), or run SQL that cannot be read first
/// (MySQL's `EXECUTE`, `PREPARE`, compound statements). Returns the offending keywords.
pub(crate) fn must_refuse(backend: DbBackend, sql: &str) -> Option<String> {
    if plainly_allowed(sql) {
        return None;
    }
    readings(backend).iter().find_map(|&reading| {
        statements_read(backend, sql, reading)
            .find_map(|statement| refused(backend, words_read(backend, statement, reading)))
    })
}

/// Whether `sql` is one statement (no `;` anywhere) led by a keyword that no database
/// refuses in any reading (`SELECT`, `INSERT`, `UPDATE`, `DELETE`, `WITH`), with nothing but
/// whitespace before it: what [`must_refuse`] would find acceptable, read without lexing
/// (most statements are; lexing one was most of a statement's checks).
fn plainly_allowed(sql: &str) -> bool {
    const PLAIN: [&str; 5] = ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"];
    let bytes = sql.as_bytes();
    if bytes.contains(&b';') {
        return false;
    }
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    // The word as `Words` reads it: from a letter, through letters, digits, `_` and `$`.
    let len = bytes[start..]
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$'))
        .unwrap_or(bytes.len() - start);
    let first = &sql[start..start + len];
    first.starts_with(|c: char| c.is_ascii_alphabetic())
        && PLAIN.iter().any(|k| first.eq_ignore_ascii_case(k))
}

/// `word` in upper case, in `buffer` (keywords are short; a longer word is none of them).
fn upper<'b>(word: &str, buffer: &'b mut [u8; 16]) -> &'b str {
    let n = word.len().min(buffer.len());
    for (to, from) in buffer.iter_mut().zip(word.bytes().take(n)) {
        *to = from.to_ascii_uppercase();
    }
    std::str::from_utf8(&buffer[..n]).unwrap_or_default()
}

fn refused<'a, W>(backend: DbBackend, words: W) -> Option<String>
where
    W: Iterator<Item = &'a str> + Clone,
{
    let mut head = words.clone();
    let (first, second, third, fourth) = (head.next()?, head.next(), head.next(), head.next());
    let mut buffer = [0; 16];
    let first_upper = upper(first, &mut buffer);
    let named = |n: usize| {
        words
            .clone()
            .take(n)
            .map(|w| w.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (second, third, fourth) = (second.as_ref(), third.as_ref(), fourth.as_ref());
    let ends = match first_upper {
        // `ROLLBACK TO` manages a savepoint rather than ending the transaction: named so,
        // for the reason given with its refusal.
        "ROLLBACK" if is(second, "TO") => Some(named(2)),
        "BEGIN" | "COMMIT" | "END" | "ABORT" | "SAVEPOINT" | "RELEASE" | "ROLLBACK" => {
            Some(named(1))
        }
        "START" | "PREPARE" if is(second, "TRANSACTION") => Some(named(2)),
        _ => None,
    };
    if ends.is_some() || backend != DbBackend::MySql {
        return ends;
    }
    match first_upper {
        // SET STATEMENT … FOR <statement>: what counts is the statement.
        "SET" if is(second, "STATEMENT") => {
            let rest: Vec<&str> = words
                .clone()
                .skip_while(|w| !w.eq_ignore_ascii_case("FOR"))
                .skip(1)
                .collect();
            refused(backend, rest.into_iter())
        }
        "SET" if words.clone().any(|w| w.eq_ignore_ascii_case("autocommit")) => {
            Some("SET autocommit".to_owned())
        }
        "SET" if is(second, "PASSWORD") || (is(second, "DEFAULT") && is(third, "ROLE")) => {
            Some(named(3))
        }
        // CREATE / DROP of a temporary table do not commit.
        "CREATE" | "DROP"
            if is(second, "TEMPORARY")
                || (is(second, "OR") && is(third, "REPLACE") && is(fourth, "TEMPORARY")) =>
        {
            None
        }
        "CREATE" | "DROP" | "ALTER" | "RENAME" => Some(named(2)),
        // ANALYZE <statement> explains it; ANALYZE TABLE commits.
        "ANALYZE"
            if is(second, "TABLE") || is(second, "NO_WRITE_TO_BINLOG") || is(second, "LOCAL") =>
        {
            Some(named(2))
        }
        "LOAD" if is(second, "INDEX") => Some(named(2)),
        "TRUNCATE" | "GRANT" | "REVOKE" | "FLUSH" | "RESET" | "LOCK" | "UNLOCK" | "CHECK"
        | "OPTIMIZE" | "REPAIR" | "CACHE" | "INSTALL" | "UNINSTALL" | "SHUTDOWN" | "XA"
        | "CHANGE" | "STOP" | "START" | "BACKUP" => Some(named(1)),
        // SQL that is only read when it runs, and compound statements.
        "EXECUTE" | "PREPARE" | "IF" | "WHILE" | "LOOP" | "REPEAT" | "CASE" | "FOR" => {
            Some(named(1))
        }
        _ => None,
    }
}

/// The leading keyword of the first statement of `sql` that writes: what a read-only
/// savepoint refuses on MySQL/MariaDB, which cannot make a savepoint read-only. A function
/// with side effects called from a `SELECT` is not seen.
pub(crate) fn writes(backend: DbBackend, sql: &str) -> Option<String> {
    const WRITES: [&str; 23] = [
        "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "CREATE", "ALTER", "DROP", "TRUNCATE",
        "RENAME", "LOAD", "CALL", "GRANT", "REVOKE", "LOCK", "HANDLER",
        // SQL read only when it runs, and compound statements: they may write.
        "EXECUTE", "FOR", "IF", "WHILE", "LOOP", "REPEAT", "CASE",
    ];
    readings(backend).iter().find_map(|&reading| {
        statements_read(backend, sql, reading).find_map(|statement| {
            let mut words = words_read(backend, statement, reading);
            let first = words.next()?;
            // `ANALYZE DELETE …` runs the statement it explains (MariaDB), and a `WITH` may
            // lead to a write (MySQL 8): any writing keyword in them counts.
            if ["ANALYZE", "EXPLAIN", "WITH"]
                .iter()
                .any(|k| first.eq_ignore_ascii_case(k))
            {
                return words
                    .find(|w| WRITES[..4].iter().any(|k| w.eq_ignore_ascii_case(k)))
                    .map(str::to_ascii_uppercase);
            }
            let first = if first.eq_ignore_ascii_case("SET")
                && words
                    .clone()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case("STATEMENT"))
            {
                words.find(|w| w.eq_ignore_ascii_case("FOR"))?;
                words.next()?
            } else {
                first
            };
            WRITES
                .iter()
                .find(|k| first.eq_ignore_ascii_case(k))
                .map(|k| (*k).to_owned())
        })
    })
}
