//! Validation of the annotated function: every misuse becomes a `syn::Error` on the
//! user's own tokens, and a valid function becomes a [`Checked`] for the expansion.

use quote::ToTokens;
use syn::{FnArg, ItemFn, PatType, ReturnType, Type, TypePath};

use crate::args::Args;

/// A function that passed every check, with the index of its transaction parameter.
pub(crate) struct Checked {
    pub(crate) item: ItemFn,
    pub(crate) tx_index: usize,
}

fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(TypePath { path, .. }) => path.segments.last().map(|s| s.ident.to_string()),
        Type::Paren(p) => last_segment(&p.elem),
        Type::Group(g) => last_segment(&g.elem),
        _ => None,
    }
}

fn is_transaction_type(ty: &Type) -> bool {
    matches!(last_segment(ty).as_deref(), Some("Tx"))
}

/// Whether a parameter type can run queries outside the transaction: it names a SeaORM
/// connection (`DatabaseConnection`, `DbConn`, also inside `Arc<…>`, `Option<…>`, tuples…)
/// or is an `impl`/`dyn` of `ConnectionTrait` or `TransactionTrait`.
fn is_connection_type(ty: &Type) -> bool {
    fn path_mentions(path: &syn::Path) -> bool {
        // safe-db's `Db`, written `Db` or `safe_db::Db`: another crate's `Db` (sled's) is
        // not a connection of ours.
        let ours = path.segments.len() == 1
            || path
                .segments
                .first()
                .is_some_and(|first| first.ident == "safe_db");
        path.segments.iter().any(|segment| {
            let name = segment.ident.to_string();
            matches!(
                name.as_str(),
                "DatabaseConnection"
                    | "DbConn"
                    | "ConnectionTrait"
                    | "TransactionTrait"
                    | "DatabaseTransaction"
                    // safe-db's own handles: each begins or holds another transaction.
                    | "RequestTx"
                    | "Begin"
            ) || (ours && name == "Db")
                || match &segment.arguments {
                    syn::PathArguments::AngleBracketed(args) => args.args.iter().any(
                        |arg| matches!(arg, syn::GenericArgument::Type(t) if is_connection_type(t)),
                    ),
                    _ => false,
                }
        })
    }
    let bounds_mention =
        |bounds: &syn::punctuated::Punctuated<syn::TypeParamBound, syn::Token![+]>| {
            bounds
                .iter()
                .any(|b| matches!(b, syn::TypeParamBound::Trait(t) if path_mentions(&t.path)))
        };
    match ty {
        Type::Path(TypePath { path, .. }) => path_mentions(path),
        Type::Reference(r) => is_connection_type(&r.elem),
        Type::Paren(p) => is_connection_type(&p.elem),
        Type::Group(g) => is_connection_type(&g.elem),
        Type::Slice(s) => is_connection_type(&s.elem),
        Type::Array(a) => is_connection_type(&a.elem),
        Type::Ptr(p) => is_connection_type(&p.elem),
        Type::Tuple(t) => t.elems.iter().any(is_connection_type),
        Type::ImplTrait(i) => bounds_mention(&i.bounds),
        Type::TraitObject(o) => bounds_mention(&o.bounds),
        _ => false,
    }
}

/// Whether the receiver is a reference (`&self`, `self: &Self`, …).
fn by_reference(receiver: &syn::Receiver) -> bool {
    receiver.reference.is_some() || matches!(&*receiver.ty, Type::Reference(_))
}

/// Whether the receiver is a mutable reference (`&mut self`, `self: &mut Self`).
fn by_mut_reference(receiver: &syn::Receiver) -> bool {
    match &*receiver.ty {
        Type::Reference(r) => r.mutability.is_some(),
        _ => false,
    }
}

/// A return type that cannot be a `Result` whatever the user's aliases: a tuple, a
/// reference, a trait object, … or a well-known type that is not one. (Anything else, an
/// alias of the user's for instance, is checked by the compiler, on the same tokens.)
fn plainly_not_a_result(ty: &Type) -> bool {
    match ty {
        Type::Tuple(_)
        | Type::Reference(_)
        | Type::Array(_)
        | Type::Slice(_)
        | Type::Ptr(_)
        | Type::ImplTrait(_)
        | Type::TraitObject(_)
        | Type::BareFn(_)
        | Type::Never(_) => true,
        Type::Paren(p) => plainly_not_a_result(&p.elem),
        Type::Group(g) => plainly_not_a_result(&g.elem),
        Type::Path(TypePath { qself: None, path }) => path.segments.last().is_some_and(|last| {
            matches!(
                last.ident.to_string().as_str(),
                "Option"
                    | "String"
                    | "str"
                    | "Vec"
                    | "Box"
                    | "HashMap"
                    | "BTreeMap"
                    | "HashSet"
                    | "BTreeSet"
                    | "bool"
                    | "char"
                    | "u8"
                    | "u16"
                    | "u32"
                    | "u64"
                    | "u128"
                    | "usize"
                    | "i8"
                    | "i16"
                    | "i32"
                    | "i64"
                    | "i128"
                    | "isize"
                    | "f32"
                    | "f64"
            )
        }),
        _ => false,
    }
}

pub(crate) fn check(item: ItemFn, args: &Args) -> syn::Result<Checked> {
    let mut errors: Vec<syn::Error> = Vec::new();
    let sig = &item.sig;

    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "the `async` keyword is missing from the function declaration: \
             a `#[safe_db_operation]` must be an `async fn`",
        ));
    }

    let tx_index = sig
        .inputs
        .iter()
        .position(|arg| matches!(arg, FnArg::Typed(_)));
    match tx_index.map(|i| &sig.inputs[i]) {
        None => errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "a `#[safe_db_operation]` takes the transaction as its first parameter: \
             add `tx: &Tx` here",
        )),
        Some(FnArg::Typed(PatType { ty, .. })) => {
            if let Some(err) = check_transaction_type(ty) {
                errors.push(err);
            }
        }
        Some(FnArg::Receiver(_)) => unreachable!("position() found a typed argument"),
    }

    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Typed(pat_type) if Some(i) != tx_index && is_connection_type(&pat_type.ty) => {
                errors.push(syn::Error::new_spanned(
                    pat_type,
                    "a `#[safe_db_operation]` must not take a connection or another \
                     transaction besides its own: queries on it would run outside the \
                     transaction. Use the `tx` parameter for every query",
                ));
            }
            // `&self`, `&mut self`, or typed: `self: &Self`, `self: &mut Self`.
            FnArg::Receiver(receiver) if args.retries.is_some() && !by_reference(receiver) => {
                errors.push(syn::Error::new_spanned(
                    receiver,
                    "an operation with `retries` runs its body once per attempt, so it \
                     cannot take `self` by value: take `&self`",
                ));
            }
            FnArg::Receiver(receiver) if args.retries.is_some() && by_mut_reference(receiver) => {
                errors.push(syn::Error::new_spanned(
                    receiver,
                    "an operation with `retries` runs its body once per attempt, and what an \
                     attempt that rolls back changed in `&mut self` would stay changed in the \
                     next: take `&self`, or return the new state in the `Ok` value",
                ));
            }
            _ => {}
        }
    }

    if let ReturnType::Type(_, ty) = &sig.output
        && plainly_not_a_result(ty)
    {
        errors.push(syn::Error::new_spanned(
            ty,
            format!(
                "a `#[safe_db_operation]` must return `Result<T, E>` (with `E: \
                 From<sea_orm::DbErr>`), not `{}`: the transaction commits on `Ok` and rolls \
                 back on `Err`",
                ty.to_token_stream().to_string().replace(" ", "")
            ),
        ));
    }
    if let ReturnType::Default = sig.output {
        errors.push(syn::Error::new(
            sig.paren_token.span.close(),
            "a `#[safe_db_operation]` must return `Result<T, E>` (with `E: From<sea_orm::DbErr>`): \
             the transaction commits on `Ok` and rolls back on `Err`",
        ));
    }

    match errors.into_iter().reduce(|mut all, e| {
        all.combine(e);
        all
    }) {
        Some(err) => Err(err),
        None => Ok(Checked {
            tx_index: tx_index.expect("checked above"),
            item,
        }),
    }
}

fn check_transaction_type(ty: &Type) -> Option<syn::Error> {
    match ty {
        Type::Reference(r) if last_segment(&r.elem).as_deref() == Some("DatabaseTransaction") => {
            Some(syn::Error::new_spanned(
                ty,
                "declare the transaction as `&Tx`, not `&DatabaseTransaction`: safe-db owns \
                 the transaction's connection, so there is no SeaORM `DatabaseTransaction` \
                 underneath; every SeaORM query and mutation accepts `&Tx` in its place",
            ))
        }
        Type::Reference(r) => r.mutability.map(|_| {
            syn::Error::new_spanned(
                r,
                "take the transaction as `&Tx`, not `&mut Tx`: it is shared with nested \
                 operations, and the operation, not the body, commits or rolls it back",
            )
        }),
        ty if is_transaction_type(ty) => Some(syn::Error::new_spanned(
            ty,
            "take the transaction by reference, `&Tx`: the operation owns it, and \
             commits or rolls it back when the body returns",
        )),
        ty => Some(syn::Error::new_spanned(
            ty,
            "the first parameter of a `#[safe_db_operation]` must be the transaction: \
             add `tx: &Tx` before it",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn messages(item: ItemFn) -> Vec<String> {
        match check(item, &Args::default()) {
            Ok(_) => vec![],
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_the_supported_shapes() {
        let ok: [ItemFn; 3] = [
            parse_quote!(
                async fn f(tx: &Tx) -> Result<(), E> {}
            ),
            parse_quote!(
                async fn f(&self, tx: &safe_db::Tx, id: i32) -> Result<(), E> {}
            ),
            parse_quote!(
                async fn f<'a, T: X>(tx: &'a Tx, t: &'a T) -> Result<T, E> {}
            ),
        ];
        for item in ok {
            assert_eq!(messages(item), Vec::<String>::new());
        }
    }

    #[test]
    fn rejects_each_misuse() {
        let cases: [(ItemFn, &str); 9] = [
            (
                parse_quote!(
                    fn f(tx: &Tx) -> Result<(), E> {}
                ),
                "`async` keyword is missing",
            ),
            (
                parse_quote!(
                    async fn f() -> Result<(), E> {}
                ),
                "add `tx: &Tx` here",
            ),
            (
                parse_quote!(
                    async fn f(id: i32) -> Result<(), E> {}
                ),
                "must be the transaction",
            ),
            (
                parse_quote!(
                    async fn f(tx: Tx) -> Result<(), E> {}
                ),
                "by reference",
            ),
            (
                parse_quote!(
                    async fn f(tx: &mut Tx) -> Result<(), E> {}
                ),
                "not `&mut Tx`",
            ),
            (
                parse_quote!(
                    async fn f(tx: &Tx) {}
                ),
                "must return `Result<T, E>`",
            ),
            (
                parse_quote!(
                    async fn f(tx: &Tx, db: &DatabaseConnection) -> Result<(), E> {}
                ),
                "outside the transaction",
            ),
            (
                parse_quote!(
                    async fn f(tx: &Tx, db: Arc<sea_orm::DatabaseConnection>) -> Result<(), E> {}
                ),
                "outside the transaction",
            ),
            (
                parse_quote!(
                    async fn f(tx: &Tx, db: &impl ConnectionTrait) -> Result<(), E> {}
                ),
                "outside the transaction",
            ),
        ];
        for (item, expected) in cases {
            let found = messages(item);
            assert!(
                found.len() == 1 && found[0].contains(expected),
                "expected {expected:?}, found {found:?}"
            );
        }
    }

    #[test]
    fn reports_all_errors_at_once() {
        let found = messages(parse_quote!(
            fn f(tx: &mut Tx) {}
        ));
        assert_eq!(found.len(), 3, "{found:?}");
    }

    #[test]
    fn a_database_transaction_parameter_is_refused() {
        let err = check(
            parse_quote!(
                async fn f(tx: &sea_orm::DatabaseTransaction) -> Result<(), E> {}
            ),
            &Args::default(),
        )
        .err()
        .expect("a DatabaseTransaction parameter");
        assert!(err.to_string().contains("declare the transaction as `&Tx`"));
    }

    #[test]
    fn retries_need_self_by_reference() {
        let args: Args = parse_quote!(retries = 2);
        let err = check(
            parse_quote!(
                async fn f(self, tx: &Tx) -> Result<(), E> {}
            ),
            &args,
        )
        .err()
        .expect("self by value with retries");
        assert!(err.to_string().contains("take `&self`"));
    }
}
