//! What the refusal reads, case by case.

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
        assert!(must_refuse(PG, sql).is_some(), "{sql}");
        assert!(must_refuse(MY, sql).is_some(), "{sql}");
        assert!(must_refuse(LITE, sql).is_some(), "{sql}");
    }
    assert_eq!(
        must_refuse(PG, "rollback to savepoint a").as_deref(),
        Some("ROLLBACK TO")
    );
}

#[test]
fn reads_comments_and_strings_as_each_server_does() {
    // MariaDB: `--` is a comment only before a space; `1--1` is arithmetic, and the
    // COMMIT after it is code.
    assert_eq!(
        must_refuse(MY, "SELECT 1--1; COMMIT").as_deref(),
        Some("COMMIT")
    );
    assert_eq!(must_refuse(MY, "SELECT 1 -- 1; COMMIT"), None);
    assert_eq!(must_refuse(MY, "SELECT 1 --\n; SELECT 2"), None);
    // PostgreSQL: `name '\'` is a typed literal holding a backslash (standard strings),
    // not an escape string: the COMMIT after it is code.
    assert_eq!(
        must_refuse(PG, "SELECT name'\\'; COMMIT; SELECT '--'").as_deref(),
        Some("COMMIT")
    );
    assert_eq!(
        must_refuse(PG, "SELECT E'\\'; COMMIT; SELECT 1'").as_deref(),
        None
    );
    assert_eq!(must_refuse(PG, "SELECT e'it\\'s'; SELECT 1"), None);
    // Found by an adversarial review, each committing row of an `Err` before this:
    // a `$` inside an identifier opens no dollar quote on PostgreSQL,
    assert_eq!(
        must_refuse(PG, "SELECT 1 AS a$x$; COMMIT; SELECT $x$$x$").as_deref(),
        Some("COMMIT")
    );
    // a carriage return ends a `--` comment,
    assert_eq!(
        must_refuse(PG, "SELECT 1 -- c\r; COMMIT; SELECT 2 -- \n").as_deref(),
        Some("COMMIT")
    );
    // a letter of any script before `E` makes it part of a word (a type name),
    assert_eq!(
        must_refuse(PG, "SELECT éE'\\'; COMMIT; SELECT 'x'").as_deref(),
        Some("COMMIT")
    );
    // MariaDB's FOR loop is a compound statement, and a `;` inside an executable
    // comment ends a statement for the server,
    assert_eq!(
        must_refuse(MY, "FOR i IN 1..1 DO COMMIT /*!;*/ END FOR").as_deref(),
        Some("FOR")
    );
    assert!(must_refuse(MY, "SELECT 1 /*!; COMMIT */").is_some());
    // and NO_BACKSLASH_ESCAPES or ANSI_QUOTES may be set: read both ways.
    assert_eq!(
        must_refuse(MY, "SELECT '\\'; COMMIT; SELECT ''").as_deref(),
        Some("COMMIT")
    );
    assert_eq!(
        must_refuse(MY, "SELECT 1 AS \"a\\\"; COMMIT; SELECT \"\"").as_deref(),
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
        assert_eq!(must_refuse(PG, sql), None, "{sql}");
        assert_eq!(must_refuse(MY, sql), None, "{sql}");
    }
    // Where comments do not nest, `/*/*/` is a whole comment.
    assert!(must_refuse(MY, "/*/*/ COMMIT").is_some());
    assert!(must_refuse(LITE, "/*/*/ COMMIT").is_some());
    // MySQL's executable comments are plain comments elsewhere.
    assert_eq!(must_refuse(PG, "/*! COMMIT */ SELECT 1"), None);
    assert_eq!(must_refuse(PG, "/* /* */ COMMIT */ SELECT 1"), None);
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
        assert_eq!(must_refuse(MY, sql).as_deref(), Some(named), "{sql}");
    }
    for sql in [
        "CREATE TABLE t (a INT)",
        "ALTER TABLE t ADD b INT",
        "ANALYZE t",
    ] {
        assert_eq!(must_refuse(PG, sql), None, "{sql}");
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
        assert_eq!(must_refuse(MY, sql), None, "{sql}");
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

#[test]
fn the_plain_path_agrees_with_the_lexer() {
    let cases = [
        "UPDATE bench SET v = v + 1 WHERE id = 1",
        "  select 1",
        "\n\tWITH x AS (SELECT 1) SELECT * FROM x",
        "INSERT INTO t VALUES (1)",
        "delete from t",
        "UPDATEx t",
        "SELECT 1; COMMIT",
        "SELECT 1 -- ;\n",
        "/* c */ COMMIT",
        "COMMIT",
        "ROLLBACK TO x",
        "SELECT$ 1",
        "_SELECT 1",
        "",
        "   ",
        "SELECT/*!50001 ; COMMIT */",
        "WITH/*!*/ COMMIT",
        "SELECT 'a';",
        "é SELECT",
    ];
    for sql in cases {
        if plainly_allowed(sql) {
            for backend in [PG, MY, LITE] {
                let reads: Vec<Option<String>> = readings(backend)
                    .iter()
                    .map(|&reading| {
                        statements_read(backend, sql, reading).find_map(|statement| {
                            refused(backend, words_read(backend, statement, reading))
                        })
                    })
                    .collect();
                assert!(reads.iter().all(Option::is_none), "{sql}: {reads:?}");
            }
        }
    }
    assert!(plainly_allowed("UPDATE bench SET v = v + 1 WHERE id = 1"));
    assert!(!plainly_allowed("SELECT 1; COMMIT"));
    assert!(!plainly_allowed("/* c */ SELECT 1"));
    assert!(!plainly_allowed("UPDATEx t"));
}
