//! Configuration from the environment: read replicas, statement logging, and no password
//! in any log.

use safe_db::{DbConfig, Error, Tx, safe_db_operation};
use safe_db_test_support::{Backend, capture, exec, ids, replace_database, server_url};
use sea_orm::Database;

const PASSWORD: &str = "never-print-this-pw";

/// The test server's URL for `database`, with a password added (the server trusts
/// local connections, so any password is accepted).
fn with_password(base: &str, database: &str) -> String {
    let url = replace_database(base, database);
    let (scheme, rest) = url.split_once("://").expect("scheme://");
    let (userinfo, host) = rest.split_once('@').expect("user@host");
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    let with = format!("{scheme}://{user}:{PASSWORD}@{host}");
    assert!(with.contains(PASSWORD));
    with
}

async fn fresh_database(base: &str, name: &str) {
    let admin = Database::connect(base).await.unwrap();
    exec(&admin, &format!("DROP DATABASE IF EXISTS {name}")).await;
    exec(&admin, &format!("CREATE DATABASE {name}")).await;
    admin.close().await.unwrap();
    let db = Database::connect(replace_database(base, name))
        .await
        .unwrap();
    exec(
        &db,
        "CREATE TABLE agents (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    )
    .await;
    db.close().await.unwrap();
}

#[safe_db_operation(read_only)]
async fn list(tx: &Tx) -> Result<Vec<i32>, Error> {
    Ok(ids(tx, "SELECT id FROM agents ORDER BY id").await)
}

#[safe_db_operation]
async fn add(tx: &Tx, id: i32) -> Result<Vec<i32>, Error> {
    use sea_orm::ConnectionTrait;
    tx.execute_unprepared(&format!("INSERT INTO agents (id, name) VALUES ({id}, 'a')"))
        .await?;
    Ok(ids(tx, "SELECT id FROM agents ORDER BY id").await)
}

#[tokio::test]
async fn read_only_operations_run_on_the_replica() {
    let Some(base) = server_url(Backend::Postgres) else {
        return;
    };
    fresh_database(&base, "safe_db_primary").await;
    fresh_database(&base, "safe_db_replica").await;
    // Stand-ins: the "replica" holds different rows, so reads show where they ran.
    let replica = Database::connect(replace_database(&base, "safe_db_replica"))
        .await
        .unwrap();
    exec(
        &replica,
        "INSERT INTO agents (id, name) VALUES (100, 'on the replica')",
    )
    .await;

    let primary_url = with_password(&base, "safe_db_primary");
    let replica_url = with_password(&base, "safe_db_replica");
    let config = DbConfig::from_vars(|name| match name {
        "DATABASE_URL" => Some(primary_url.clone()),
        "DATABASE_REPLICA_URL" => Some(replica_url.clone()),
        "DATABASE_POOL_SIZE" => Some("2".into()),
        _ => None,
    })
    .unwrap();
    assert!(config.has_replica());
    let db = config.connect().await.unwrap();

    assert_eq!(
        add(&db, 1).await.unwrap(),
        vec![1],
        "writes go to the primary"
    );
    assert_eq!(
        list(&db).await.unwrap(),
        vec![100],
        "read-only operations go to the replica"
    );
    assert_eq!(ids(&*db, "SELECT id FROM agents").await, vec![1]);
    assert_eq!(ids(&replica, "SELECT id FROM agents").await, vec![100]);
    db.close().await.unwrap();
    replica.close().await.unwrap();
}

#[tokio::test]
async fn statements_are_logged_with_echo_and_no_password_is_ever_logged() {
    let Some(base) = server_url(Backend::Postgres) else {
        return;
    };
    fresh_database(&base, "safe_db_echo").await;
    let url = format!(
        "{}?pool_size=1&pool_pre_ping=true",
        with_password(&base, "safe_db_echo")
    );

    for echo in [true, false] {
        let (captured, guard) = capture::start();
        let config = DbConfig::from_vars(|name| match name {
            "DATABASE_URL" => Some(url.clone()),
            "SQL_ECHO" => Some(echo.to_string()),
            _ => None,
        })
        .unwrap();
        let shown = format!("{config} {config:?}");
        let db = config.connect().await.unwrap();
        add(&db, if echo { 1 } else { 2 }).await.unwrap();
        db.close().await.unwrap();
        // A failing connection, with the password in its URL.
        let bad = DbConfig::from_url(&with_password(&base, "no_such_database")).unwrap();
        let err = bad.connect().await.unwrap_err();
        drop(guard);

        let everything = format!("{}{shown}{err}{err:?}", captured.all_text());
        assert!(
            !everything.contains(PASSWORD),
            "the password leaked (echo={echo})"
        );
        let logged_insert = captured
            .events()
            .iter()
            .any(|e| e.fields.values().any(|v| v.contains("INSERT INTO agents")));
        assert_eq!(
            logged_insert, echo,
            "statements are logged exactly when echo is on"
        );
    }
}

#[test]
fn without_database_url_the_default_is_an_embedded_sqlite_file_and_it_says_so() {
    let (captured, _guard) = capture::start();
    let config = DbConfig::from_vars(|_| None).unwrap();
    assert_eq!(config.connect_options().get_url(), safe_db::DEFAULT_URL);
    let said = captured
        .events()
        .iter()
        .any(|e| e.level == "INFO" && e.fields["message"].contains("DATABASE_URL is not set"));
    assert!(said, "{:?}", captured.events());
}
