//! Not public API: the items `#[safe_db_operation]` expands to, and the one control
//! flow of an operation, shared by the attribute and the closure form.

pub use crate::operation::{Entered, Next, OpName, Operation, Outcome, Run};
pub use crate::{Begin, Connection, InTransaction, Isolation, Managed, Options, Tx};
pub use core::result::Result;

/// Names the never type `!` on stable Rust, as the return type of `fn() -> !` (for
/// `CallbackOutput`).
pub trait Returns {
    /// What the function returns.
    type Output;
}

impl<T> Returns for fn() -> T {
    type Output = T;
}

/// The types the transaction parameter may be declared with.
#[diagnostic::on_unimplemented(
    message = "the first parameter of a `#[safe_db_operation]` must be the transaction, `&Tx`",
    label = "expected `&safe_db::Tx`, found `{Self}`",
    note = "write the function as `async fn name(tx: &Tx, …)`; callers then pass a connection or a `Tx` in its place"
)]
pub trait TxParam<'t> {
    fn from_tx(tx: &'t Tx) -> Self;
}

impl<'t> TxParam<'t> for &'t Tx {
    #[inline]
    fn from_tx(tx: &'t Tx) -> Self {
        tx
    }
}

/// The return types an operation may have.
#[diagnostic::on_unimplemented(
    message = "a `#[safe_db_operation]` must return a `Result`, not `{Self}`",
    label = "expected `Result<_, E>` where `E: From<sea_orm::DbErr>`",
    note = "the transaction commits on `Ok` and rolls back on `Err`, so the function must return a `Result`"
)]
pub trait OperationResult {
    type Error;
}

impl<T, E> OperationResult for core::result::Result<T, E> {
    type Error = E;
}

/// Error types that can hold a database error.
#[diagnostic::on_unimplemented(
    message = "the error type `{Self}` cannot hold a database error",
    label = "`{Self}` does not implement `From<sea_orm::DbErr>`",
    note = "BEGIN, COMMIT and every query can fail with a `sea_orm::DbErr`: implement `From<sea_orm::DbErr>` for `{Self}`, or use `safe_db::Error` or `sea_orm::DbErr` as the error type"
)]
pub trait FromDbErr {
    fn from_db_err(err: sea_orm::DbErr) -> Self;
}

impl<E: From<sea_orm::DbErr>> FromDbErr for E {
    #[inline]
    fn from_db_err(err: sea_orm::DbErr) -> Self {
        E::from(err)
    }
}

/// Makes the declared error type from a database error. The expansion names it once,
/// instantiated with the declared return type and spanned on it: a return type that is
/// not a `Result`, or whose error cannot hold a `DbErr`, is reported there, once.
pub fn db_err_into<R: OperationResult>(err: sea_orm::DbErr) -> R::Error
where
    R::Error: FromDbErr,
{
    R::Error::from_db_err(err)
}

/// Arguments of an operation that retries: each attempt gets its own copy.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must be `Clone` because the operation has `retries`",
    label = "each attempt of a retried operation needs its own copy of this argument",
    note = "derive or implement `Clone` for `{Self}`, pass it by reference, or remove `retries`"
)]
pub trait RetryArg: Clone {}

impl<T: Clone> RetryArg for T {}

#[inline]
pub fn retry_copy<T: RetryArg>(value: &T) -> T {
    value.clone()
}

/// The control flow of an operation, written once for the attribute and the closure form.
/// `single:` is for operations without retries (one attempt, which may move the arguments
/// into the body); `retrying:` loops over attempts.
#[doc(hidden)]
#[macro_export]
macro_rules! __operation {
    (single: $conn:expr, $options:expr, $name:expr, $into:expr, |$tx:ident| $body:expr) => {{
        let into = $into;
        let mut operation = $crate::__private::Operation::new(&$options, $name);
        match operation.enter_boxed($conn).await {
            $crate::__private::Result::Ok(entered) => {
                let outcome = operation
                    .run(async {
                        let $tx: &$crate::__private::Tx = entered.tx();
                        $body
                    })
                    .await;
                operation.conclude_boxed(entered, outcome, into).await
            }
            $crate::__private::Result::Err(err) => $crate::__private::Result::Err(into(err)),
        }
    }};
    (retrying: $conn:expr, $options:expr, $name:expr, $into:expr, |$tx:ident| $body:expr) => {{
        let into = $into;
        // Resolved here, where the error type is known: see `Probe`.
        let retryable = {
            #[allow(unused_imports)]
            use $crate::__private::{ClassifiedProbe as _, OpaqueProbe as _};
            (&&$crate::__private::Probe::of(into)).retryable()
        };
        let mut operation = $crate::__private::Operation::new(&$options, $name);
        loop {
            let entered = match operation.enter_boxed($conn).await {
                $crate::__private::Result::Ok(entered) => entered,
                $crate::__private::Result::Err(err) => {
                    break $crate::__private::Result::Err(into(err));
                }
            };
            let outcome = operation
                .run(async {
                    let $tx: &$crate::__private::Tx = entered.tx();
                    $body
                })
                .await;
            match operation
                .conclude_or_retry_boxed(entered, outcome, into, retryable)
                .await
            {
                $crate::__private::Next::Done(result) => break result,
                $crate::__private::Next::Retry => {}
            }
        }
    }};
}

/// The error type of an operation that retries, found from its `into`, to tell whether an
/// error its body returns is a conflict worth another attempt (one a `requires_new`
/// operation lost and the body passed on, say). Method resolution picks
/// [`ClassifiedProbe`] for the error types safe-db can read ([`Classified`]) and
/// [`OpaqueProbe`] for every other one, including a generic `E` (the closure form's).
pub struct Probe<E>(core::marker::PhantomData<fn(sea_orm::DbErr) -> E>);

impl<E> Probe<E> {
    #[inline]
    pub fn of(_: fn(sea_orm::DbErr) -> E) -> Self {
        Probe(core::marker::PhantomData)
    }
}

/// The error types whose kind safe-db can read.
pub trait Classified {
    fn kind_of(&self) -> crate::ErrorKind;
}

impl Classified for crate::Error {
    #[inline]
    fn kind_of(&self) -> crate::ErrorKind {
        self.kind()
    }
}

impl Classified for sea_orm::DbErr {
    #[inline]
    fn kind_of(&self) -> crate::ErrorKind {
        crate::ErrorKind::of(self)
    }
}

/// A conflict the body returns is retried.
pub trait ClassifiedProbe<E> {
    fn retryable(&self) -> fn(&E) -> bool;
}

impl<E: Classified> ClassifiedProbe<E> for &Probe<E> {
    #[inline]
    fn retryable(&self) -> fn(&E) -> bool {
        |err| err.kind_of().is_retryable()
    }
}

/// An error safe-db cannot read is returned at once (unless the transaction lost a
/// conflict itself).
pub trait OpaqueProbe<E> {
    fn retryable(&self) -> fn(&E) -> bool;
}

impl<E> OpaqueProbe<E> for Probe<E> {
    #[inline]
    fn retryable(&self) -> fn(&E) -> bool {
        |_| false
    }
}

// What `#[safe_db::test]` expands to (kept last: the UI tests' expected output names
// lines of this file).
#[cfg(feature = "testing")]
pub use crate::testing::attr::SetupConnection as DatabaseConnection;
#[cfg(feature = "testing")]
pub use crate::testing::attr::{
    Plan as TestPlan, Setup as TestSetup, TestBackend, run as run_test,
};
