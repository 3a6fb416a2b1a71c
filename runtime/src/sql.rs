//! What safe-db reads of a statement's text before it is sent: whether it would end the
//! transaction it is sent in, and how MariaDB can be told to stop it at the deadline.
//!
//! Only the leading keywords are read (after whitespace and comments), never the rest.

use std::time::Duration;

use sea_orm::DbBackend;

/// The first keywords of a statement, skipping whitespace, `-- …`, `# …` and `/* … */`
/// comments. MySQL's executable comments (`/*! … */`, `/*M! … */`) are code, so their
/// content is read as keywords.
struct Words<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let s = self.rest.trim_start_matches(|c: char| {
                c.is_whitespace() || c == '(' || c == ';' || c == '*' || c == '/'
            });
            // `*` and `/` alone are skipped above, so look at what a comment starts with
            // before the trim ate it.
            let skipped = self.rest.len() - s.len();
            let before = &self.rest[..skipped];
            if let Some(open) = before.rfind("/*") {
                let body = &self.rest[open + 2..];
                let executable = body.starts_with('!') || body.starts_with("M!");
                if executable {
                    // Skip the marker and an optional version number, then read on.
                    let body = body.trim_start_matches(['M', '!']);
                    self.rest = body.trim_start_matches(|c: char| c.is_ascii_digit());
                } else {
                    self.rest = body.find("*/").map_or("", |end| &body[end + 2..]);
                }
                continue;
            }
            if s.starts_with("--") || s.starts_with('#') {
                self.rest = s.find('\n').map_or("", |end| &s[end + 1..]);
                continue;
            }
            let end = s
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(s.len());
            if end == 0 {
                return None;
            }
            self.rest = &s[end..];
            return Some(&s[..end]);
        }
    }
}

fn words(sql: &str) -> Words<'_> {
    Words { rest: sql }
}

fn is(word: Option<&str>, keyword: &str) -> bool {
    word.is_some_and(|w| w.eq_ignore_ascii_case(keyword))
}

/// Why `sql` must not be sent inside a managed transaction on `backend`, if it must not:
/// it would end the transaction (a `COMMIT`, `ROLLBACK` or `BEGIN` written by hand, on
/// every database), or make MySQL/MariaDB commit it implicitly (DDL and the other
/// statements of MariaDB's "implicit commit" list). Returns the offending keywords.
pub(crate) fn ends_transaction(backend: DbBackend, sql: &str) -> Option<String> {
    let mut w = words(sql);
    let (first, second, third) = (w.next(), w.next(), w.next());
    let first_upper = first?.to_ascii_uppercase();
    let named = |n: usize| {
        [first, second, third][..n]
            .iter()
            .flatten()
            .map(|s| s.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ends = match first_upper.as_str() {
        "BEGIN" | "COMMIT" | "END" | "ABORT" => Some(named(1)),
        "START" if is(second, "TRANSACTION") => Some(named(2)),
        // ROLLBACK TO [SAVEPOINT] and ROLLBACK WORK TO only undo to a savepoint.
        "ROLLBACK"
            if !(is(second, "TO")
                || ((is(second, "WORK") || is(second, "TRANSACTION")) && is(third, "TO"))) =>
        {
            Some(named(1))
        }
        _ => None,
    };
    if ends.is_some() || backend != DbBackend::MySql {
        return ends;
    }
    match first_upper.as_str() {
        // CREATE / DROP of a temporary table do not commit.
        "CREATE" | "DROP"
            if is(second, "TEMPORARY")
                || (is(second, "OR") && is(third, "REPLACE") && {
                    let mut again = words(sql).skip(3);
                    is(again.next(), "TEMPORARY")
                }) =>
        {
            None
        }
        "CREATE" | "DROP" | "ALTER" | "RENAME" => Some(named(2)),
        "TRUNCATE" | "GRANT" | "REVOKE" | "FLUSH" | "RESET" | "LOCK" | "UNLOCK" | "ANALYZE"
        | "CHECK" | "OPTIMIZE" | "REPAIR" | "CACHE" | "INSTALL" | "UNINSTALL" | "SHUTDOWN"
        | "XA" | "CHANGE" | "STOP" | "START" => Some(named(1)),
        "LOAD" if is(second, "INDEX") => Some(named(2)),
        "SET" if is(second, "PASSWORD") => Some(named(2)),
        "SET"
            if words(sql)
                .take(4)
                .any(|w| w.eq_ignore_ascii_case("autocommit")) =>
        {
            Some("SET autocommit".to_owned())
        }
        _ => None,
    }
}

/// The leading keyword of `sql` if it writes: what a read-only savepoint refuses on
/// MySQL/MariaDB, which cannot make a savepoint read-only. A function with side effects
/// called from a `SELECT` is not seen.
pub(crate) fn writes(sql: &str) -> Option<String> {
    let first = words(sql).next()?;
    [
        "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "CREATE", "ALTER", "DROP", "TRUNCATE",
        "RENAME", "LOAD", "CALL", "GRANT", "REVOKE", "LOCK", "HANDLER",
    ]
    .iter()
    .find(|k| first.eq_ignore_ascii_case(k))
    .map(|k| (*k).to_owned())
}

/// `sql` prefixed so that MariaDB stops it once `left` has passed (`SET STATEMENT
/// max_statement_time = … FOR`), inside an executable comment that MySQL reads as a plain
/// comment. `None` for statements `SET STATEMENT` does not take.
///
/// `left` is rounded up to a multiple of 100 ms: the statement is stopped at most that
/// long after the deadline, and a statement run many times gets a few prepared forms, not
/// one per call.
pub(crate) fn with_statement_time(sql: &str, left: Duration) -> Option<String> {
    let first = words(sql).next()?;
    let bounded = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "CALL", "DO",
    ]
    .iter()
    .any(|k| first.eq_ignore_ascii_case(k));
    if !bounded {
        return None;
    }
    let ms = left.as_millis().div_ceil(100).max(1) * 100;
    Some(format!(
        "/*M! SET STATEMENT max_statement_time={}.{:03} FOR */ {sql}",
        ms / 1000,
        ms % 1000
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MY: DbBackend = DbBackend::MySql;
    const PG: DbBackend = DbBackend::Postgres;

    #[test]
    fn reads_leading_words_past_comments() {
        let w: Vec<_> = words("  -- hi\n /* c */ (SELECT x FROM t").collect();
        assert_eq!(w[..2], ["SELECT", "x"]);
        let w: Vec<_> = words("# x\nCREATE TABLE t").take(2).collect();
        assert_eq!(w, ["CREATE", "TABLE"]);
        let w: Vec<_> = words("/*!50001 CREATE TABLE t */").take(2).collect();
        assert_eq!(w, ["CREATE", "TABLE"]);
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
        ] {
            assert!(ends_transaction(PG, sql).is_some(), "{sql}");
            assert!(ends_transaction(MY, sql).is_some(), "{sql}");
            assert!(ends_transaction(DbBackend::Sqlite, sql).is_some(), "{sql}");
        }
        for sql in [
            "ROLLBACK TO SAVEPOINT a",
            "rollback work to a",
            "SELECT 1",
            "INSERT INTO commit_log VALUES (1)",
        ] {
            assert_eq!(ends_transaction(PG, sql), None, "{sql}");
            assert_eq!(ends_transaction(MY, sql), None, "{sql}");
        }
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
            ("GRANT SELECT ON t TO u", "GRANT"),
            ("/*!40000 ALTER TABLE t DISABLE KEYS */", "ALTER TABLE"),
        ] {
            assert_eq!(ends_transaction(MY, sql).as_deref(), Some(named), "{sql}");
            assert_eq!(ends_transaction(PG, sql), None, "{sql}");
        }
        for sql in [
            "CREATE TEMPORARY TABLE t (a INT)",
            "create or replace temporary table t (a int)",
            "DROP TEMPORARY TABLE t",
            "SELECT * FROM t LOCK IN SHARE MODE",
            "UPDATE t SET a = 1",
            "SET @x = 1",
        ] {
            assert_eq!(ends_transaction(MY, sql), None, "{sql}");
        }
    }

    #[test]
    fn tells_writes_from_reads() {
        assert_eq!(
            writes(" insert into t values (1)").as_deref(),
            Some("INSERT")
        );
        assert_eq!(
            writes("/* x */ UPDATE t SET a = 1").as_deref(),
            Some("UPDATE")
        );
        assert_eq!(writes("SELECT * FROM t"), None);
        assert_eq!(writes("WITH x AS (SELECT 1) SELECT * FROM x"), None);
        assert_eq!(writes("SHOW TABLES"), None);
    }

    #[test]
    fn bounds_data_statements_for_mariadb() {
        assert_eq!(
            with_statement_time("SELECT SLEEP(8)", Duration::from_millis(301)).as_deref(),
            Some("/*M! SET STATEMENT max_statement_time=0.400 FOR */ SELECT SLEEP(8)")
        );
        assert_eq!(
            with_statement_time("insert into t values (1)", Duration::ZERO).as_deref(),
            Some("/*M! SET STATEMENT max_statement_time=0.100 FOR */ insert into t values (1)")
        );
        assert_eq!(
            with_statement_time("SET @a = 1", Duration::from_secs(1)),
            None
        );
        assert_eq!(
            with_statement_time("SAVEPOINT s", Duration::from_secs(1)),
            None
        );
    }
}
