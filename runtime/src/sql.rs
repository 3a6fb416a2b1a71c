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

use sea_orm::DbBackend;

/// The statements of `sql` (without their `;`), skipping empty ones, read with backslash
/// escapes on MySQL and executable comments as comments.
#[cfg(test)]
fn statements(backend: DbBackend, sql: &str) -> Statements<'_> {
    statements_read(backend, sql, Reading::default())
}

/// How a MySQL/MariaDB statement is read where the server's settings decide: with or
/// without backslash escapes (`NO_BACKSLASH_ESCAPES`, and `ANSI_QUOTES`, under which `"…"`
/// has none), executable comments (`/*! … */`, `/*M! … */`) as code or as comments. A
/// statement is refused if any reading refuses it.
#[derive(Clone, Copy, Debug)]
struct Reading {
    backslash: bool,
    executable: bool,
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
fn readings(backend: DbBackend) -> &'static [Reading] {
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
fn statements_read(backend: DbBackend, sql: &str, reading: Reading) -> Statements<'_> {
    Statements {
        sql,
        mysql: backend == DbBackend::MySql,
        postgres: backend == DbBackend::Postgres,
        reading,
        start: 0,
    }
}

struct Statements<'a> {
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
fn identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// After `/*`: the length of MySQL's executable-comment marker (`!` or `M!` and a version
/// number), if the comment is one.
fn executable_marker(after: &str) -> Option<usize> {
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
fn dash_comment(bytes: &[u8], i: usize, mysql: bool) -> bool {
    bytes.get(i + 1) == Some(&b'-')
        && (!mysql
            || bytes
                .get(i + 2)
                .is_none_or(|b| b.is_ascii_whitespace() || b.is_ascii_control()))
}

/// Whether the `'` at `i` opens PostgreSQL's escape string `E'…'` (backslash escapes):
/// the `E` stands alone. After a longer word it is a typed literal (`name '\'`), a
/// standard string in which a backslash is text.
fn escape_string(bytes: &[u8], i: usize) -> bool {
    i > 0 && bytes[i - 1].eq_ignore_ascii_case(&b'e') && (i < 2 || !identifier_byte(bytes[i - 2]))
}

/// The index after the closing `quote` (a doubled quote is part of the text).
fn skip_quoted(bytes: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
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
fn skip_line(bytes: &[u8], i: usize) -> usize {
    bytes[i..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map_or(bytes.len(), |end| i + end + 1)
}

/// The index after the `*/` closing the comment opened at `i` (nested on PostgreSQL).
fn skip_block(bytes: &[u8], i: usize, nested: bool) -> usize {
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
fn skip_dollar_quoted(sql: &str, i: usize) -> usize {
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
fn words(backend: DbBackend, statement: &str, executable: bool) -> Words<'_> {
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
fn words_read(backend: DbBackend, statement: &str, reading: Reading) -> Words<'_> {
    Words {
        statement,
        backend,
        executable: reading.executable,
        backslash: reading.backslash,
        i: 0,
    }
}

#[derive(Clone)]
struct Words<'a> {
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

fn is(word: Option<&&str>, keyword: &str) -> bool {
    word.is_some_and(|w| w.eq_ignore_ascii_case(keyword))
}

/// Why `sql` must not be sent inside a managed transaction on `backend`, if it must not:
/// one of its statements would end the transaction, or break sqlx's savepoint stack
/// (written by hand on every database), or make MySQL/MariaDB commit it implicitly (DDL
/// and the others of its "implicit commit" list), or run SQL that cannot be read first
/// (MySQL's `EXECUTE`, `PREPARE`, compound statements). Returns the offending keywords.
pub(crate) fn ends_transaction(backend: DbBackend, sql: &str) -> Option<String> {
    readings(backend).iter().find_map(|&reading| {
        statements_read(backend, sql, reading)
            .find_map(|statement| refused(backend, words_read(backend, statement, reading)))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const MY: DbBackend = DbBackend::MySql;
    const PG: DbBackend = DbBackend::Postgres;
    const LITE: DbBackend = DbBackend::Sqlite;

    fn split(backend: DbBackend, sql: &str) -> Vec<&str> {
        statements(backend, sql).collect()
    }

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        assert_eq!(split(PG, "SELECT 1; COMMIT"), ["SELECT 1", " COMMIT"]);
        assert_eq!(
            split(PG, "SELECT ';'; SELECT 2;"),
            ["SELECT ';'", " SELECT 2"]
        );
        assert_eq!(split(MY, r"SELECT 'a\';b'"), [r"SELECT 'a\';b'"]);
        assert_eq!(split(PG, "SELECT $x$;$x$"), ["SELECT $x$;$x$"]);
        assert_eq!(split(PG, "SELECT $1; x"), ["SELECT $1", " x"]);
        assert_eq!(
            split(PG, "/* ; /* ; */ ; */ SELECT 1"),
            ["/* ; /* ; */ ; */ SELECT 1"]
        );
        assert_eq!(split(MY, "SELECT 1 -- ;\n"), ["SELECT 1 -- ;\n"]);
    }

    #[test]
    fn reads_words_past_comments() {
        assert_eq!(
            words(PG, "  -- hi\n /* c */ (SELECT x FROM t", false).collect::<Vec<_>>()[..2],
            ["SELECT", "x"]
        );
        assert_eq!(
            words(MY, "# x\nCREATE TABLE t", false).collect::<Vec<_>>()[..2],
            ["CREATE", "TABLE"]
        );
        assert_eq!(
            words(MY, "/*!50001 CREATE TABLE t */", true).collect::<Vec<_>>()[..2],
            ["CREATE", "TABLE"]
        );
        assert_eq!(
            words(MY, "/*!50001 CREATE TABLE t */", false).collect::<Vec<_>>(),
            Vec::<&str>::new()
        );
        // PostgreSQL nests comments: this one is never closed (the server refuses it).
        assert_eq!(
            words(PG, "/*/*/ COMMIT */ SELECT", false).collect::<Vec<_>>(),
            Vec::<&str>::new()
        );
        assert_eq!(
            words(MY, "/*/*/ COMMIT", false).collect::<Vec<_>>(),
            ["COMMIT"]
        );
        assert_eq!(
            words(MY, "SET @@session.autocommit=0", false).collect::<Vec<_>>(),
            ["SET", "session", "autocommit"]
        );
    }

    #[test]
    fn refuses_what_ends_a_transaction_everywhere() {
        for sql in [
            "COMMIT",
            "commit work",
            "ROLLBACK",
            "rollback work",
            "BEGIN",
            "START TRANSACTION READ ONLY",
            "END",
            "SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "ROLLBACK TO SAVEPOINT a",
            "PREPARE TRANSACTION 'x'",
            "SELECT 1; COMMIT",
            "INSERT INTO t VALUES (';'); commit",
        ] {
            assert!(ends_transaction(PG, sql).is_some(), "{sql}");
            assert!(ends_transaction(MY, sql).is_some(), "{sql}");
            assert!(ends_transaction(LITE, sql).is_some(), "{sql}");
        }
        assert_eq!(
            ends_transaction(PG, "rollback to savepoint a").as_deref(),
            Some("ROLLBACK TO")
        );
    }

    #[test]
    fn reads_comments_and_strings_as_each_server_does() {
        // MariaDB: `--` is a comment only before a space; `1--1` is arithmetic, and the
        // COMMIT after it is code.
        assert_eq!(
            ends_transaction(MY, "SELECT 1--1; COMMIT").as_deref(),
            Some("COMMIT")
        );
        assert_eq!(ends_transaction(MY, "SELECT 1 -- 1; COMMIT"), None);
        assert_eq!(ends_transaction(MY, "SELECT 1 --\n; SELECT 2"), None);
        // PostgreSQL: `name '\'` is a typed literal holding a backslash (standard strings),
        // not an escape string: the COMMIT after it is code.
        assert_eq!(
            ends_transaction(PG, "SELECT name'\\'; COMMIT; SELECT '--'").as_deref(),
            Some("COMMIT")
        );
        assert_eq!(
            ends_transaction(PG, "SELECT E'\\'; COMMIT; SELECT 1'").as_deref(),
            None
        );
        assert_eq!(ends_transaction(PG, "SELECT e'it\\'s'; SELECT 1"), None);
        // Found by an adversarial review, each committing row of an `Err` before this:
        // a `$` inside an identifier opens no dollar quote on PostgreSQL,
        assert_eq!(
            ends_transaction(PG, "SELECT 1 AS a$x$; COMMIT; SELECT $x$$x$").as_deref(),
            Some("COMMIT")
        );
        // a carriage return ends a `--` comment,
        assert_eq!(
            ends_transaction(PG, "SELECT 1 -- c\r; COMMIT; SELECT 2 -- \n").as_deref(),
            Some("COMMIT")
        );
        // a letter of any script before `E` makes it part of a word (a type name),
        assert_eq!(
            ends_transaction(PG, "SELECT éE'\\'; COMMIT; SELECT 'x'").as_deref(),
            Some("COMMIT")
        );
        // MariaDB's FOR loop is a compound statement, and a `;` inside an executable
        // comment ends a statement for the server,
        assert_eq!(
            ends_transaction(MY, "FOR i IN 1..1 DO COMMIT /*!;*/ END FOR").as_deref(),
            Some("FOR")
        );
        assert!(ends_transaction(MY, "SELECT 1 /*!; COMMIT */").is_some());
        // and NO_BACKSLASH_ESCAPES or ANSI_QUOTES may be set: read both ways.
        assert_eq!(
            ends_transaction(MY, "SELECT '\\'; COMMIT; SELECT ''").as_deref(),
            Some("COMMIT")
        );
        assert_eq!(
            ends_transaction(MY, "SELECT 1 AS \"a\\\"; COMMIT; SELECT \"\"").as_deref(),
            Some("COMMIT")
        );
        for sql in [
            "SELECT 1",
            "INSERT INTO commit_log VALUES (1)",
            "UPDATE t SET begin = 1",
            "SELECT 'COMMIT'",
            "SELECT 1 -- ; COMMIT",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert_eq!(ends_transaction(PG, sql), None, "{sql}");
            assert_eq!(ends_transaction(MY, sql), None, "{sql}");
        }
        // Where comments do not nest, `/*/*/` is a whole comment.
        assert!(ends_transaction(MY, "/*/*/ COMMIT").is_some());
        assert!(ends_transaction(LITE, "/*/*/ COMMIT").is_some());
        // MySQL's executable comments are plain comments elsewhere.
        assert_eq!(ends_transaction(PG, "/*! COMMIT */ SELECT 1"), None);
        assert_eq!(ends_transaction(PG, "/* /* */ COMMIT */ SELECT 1"), None);
    }

    #[test]
    fn refuses_implicit_commits_on_mysql_only() {
        for (sql, named) in [
            ("CREATE TABLE t (a INT)", "CREATE TABLE"),
            ("  /* x */ alter table t add b int", "ALTER TABLE"),
            ("DROP TABLE t", "DROP TABLE"),
            ("TRUNCATE t", "TRUNCATE"),
            ("RENAME TABLE a TO b", "RENAME TABLE"),
            ("LOCK TABLES t WRITE", "LOCK"),
            ("CREATE INDEX i ON t (a)", "CREATE INDEX"),
            ("set autocommit = 1", "SET autocommit"),
            ("SET SESSION autocommit=1", "SET autocommit"),
            ("SET @@session.autocommit=0", "SET autocommit"),
            ("SET NAMES utf8mb4, autocommit=0", "SET autocommit"),
            ("GRANT SELECT ON t TO u", "GRANT"),
            ("/*!40000 ALTER TABLE t DISABLE KEYS */", "ALTER TABLE"),
            (
                "/*M!999999 SELECT 1, */ CREATE TABLE x (a int)",
                "CREATE TABLE",
            ),
            (
                "SET STATEMENT max_statement_time=10 FOR CREATE TABLE x (a int)",
                "CREATE TABLE",
            ),
            ("EXECUTE IMMEDIATE 'COMMIT'", "EXECUTE"),
            ("PREPARE s FROM 'COMMIT'", "PREPARE"),
            ("IF 1 THEN COMMIT; END IF", "IF"),
            ("SET DEFAULT ROLE NONE", "SET DEFAULT ROLE"),
            ("BACKUP LOCK t", "BACKUP"),
            ("ANALYZE TABLE t", "ANALYZE TABLE"),
        ] {
            assert_eq!(ends_transaction(MY, sql).as_deref(), Some(named), "{sql}");
        }
        for sql in [
            "CREATE TABLE t (a INT)",
            "ALTER TABLE t ADD b INT",
            "ANALYZE t",
        ] {
            assert_eq!(ends_transaction(PG, sql), None, "{sql}");
        }
        for sql in [
            "CREATE TEMPORARY TABLE t (a INT)",
            "create or replace temporary table t (a int)",
            "DROP TEMPORARY TABLE t",
            "SELECT * FROM t LOCK IN SHARE MODE",
            "UPDATE t SET a = 1",
            "SET @x = 1",
            "ANALYZE SELECT * FROM t",
            "ANALYZE FORMAT=JSON SELECT 1",
            "SET STATEMENT max_statement_time=1 FOR SELECT SLEEP(1)",
            "HANDLER t READ FIRST",
        ] {
            assert_eq!(ends_transaction(MY, sql), None, "{sql}");
        }
    }

    #[test]
    fn a_compound_statement_counts_as_a_write() {
        assert_eq!(
            writes(
                MY,
                "FOR i IN 1..1 DO INSERT INTO t VALUES (2) /*!;*/ END FOR"
            )
            .as_deref(),
            Some("FOR")
        );
    }

    #[test]
    fn tells_writes_from_reads() {
        assert_eq!(
            writes(MY, " insert into t values (1)").as_deref(),
            Some("INSERT")
        );
        assert_eq!(
            writes(MY, "/* x */ UPDATE t SET a = 1").as_deref(),
            Some("UPDATE")
        );
        assert_eq!(
            writes(MY, "SELECT 1; DELETE FROM t").as_deref(),
            Some("DELETE")
        );
        assert_eq!(
            writes(MY, "SET STATEMENT max_statement_time=1 FOR DELETE FROM t").as_deref(),
            Some("DELETE")
        );
        assert_eq!(
            writes(MY, "ANALYZE DELETE FROM t").as_deref(),
            Some("DELETE")
        );
        assert_eq!(
            writes(MY, "ANALYZE FORMAT=JSON UPDATE t SET a = 1").as_deref(),
            Some("UPDATE")
        );
        assert_eq!(writes(MY, "ANALYZE SELECT * FROM t"), None);
        assert_eq!(writes(MY, "SELECT * FROM t"), None);
        assert_eq!(writes(MY, "WITH x AS (SELECT 1) SELECT * FROM x"), None);
        assert_eq!(
            writes(MY, "WITH x AS (SELECT 1) DELETE FROM t").as_deref(),
            Some("DELETE")
        );
        assert_eq!(writes(MY, "SHOW TABLES"), None);
    }
}
