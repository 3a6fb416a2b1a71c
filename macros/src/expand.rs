//! Code generation: the checked function, rewritten to take a connection and to run its
//! body through the runtime's one operation path (`::safe_db::__operation!`).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, Pat, PatIdent, PatType, ReturnType};

use crate::args::{Args, Propagation};
use crate::check::Checked;

/// The options as a constant expression of the runtime's `Options`.
fn options(args: &Args) -> TokenStream {
    let mut options = quote!(::safe_db::__private::Options::new());
    if let Some(isolation) = args.isolation {
        let variant = Ident::new(isolation.variant(), Span::call_site());
        options.extend(quote!(.isolation(::safe_db::__private::Isolation::#variant)));
    }
    if args.read_only {
        options.extend(quote!(.read_only()));
    }
    if let Some(ms) = args.timeout_ms {
        options.extend(quote!(.timeout(::core::time::Duration::from_millis(#ms))));
    }
    if let Some(retries) = args.retries {
        options.extend(quote!(.retries(#retries)));
    }
    if args.propagation == Propagation::RequiresNew {
        options.extend(quote!(.requires_new()));
    }
    if args.joins {
        options.extend(quote!(.savepoint(false)));
    }
    options
}

/// The type callers pass for the transaction: its bound is what the compiler checks at
/// each call, spanned on the transaction parameter (`span`), where a violation's "required
/// by this bound" note then points.
fn caller_bound(args: &Args, span: Span) -> TokenStream {
    let bound = match (args.propagation, args.joins) {
        (Propagation::Durable, _) => quote!(&impl ::safe_db::__private::Connection),
        (Propagation::Mandatory, false) => quote!(&impl ::safe_db::__private::InTransaction),
        (Propagation::Mandatory, true) => {
            quote!(&(impl ::safe_db::__private::InTransaction + ::safe_db::__private::Managed))
        }
        (Propagation::RequiresNew, _) | (Propagation::Required, true) => {
            quote!(&impl ::safe_db::__private::Managed)
        }
        (Propagation::Required, false) => quote!(&impl ::safe_db::__private::Begin),
    };
    respan(bound, span)
}

/// `tokens`, every one of them spanned at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(group) = &tree {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = proc_macro2::TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// Every lint the generated code could trip in the user's crate, allowed in one place.
fn allowed_lints() -> TokenStream {
    quote! {
        #[allow(
            unknown_lints,
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::needless_return,
            clippy::unreachable
        )]
    }
}

pub(crate) fn expand(args: &Args, checked: Checked) -> TokenStream {
    let Checked { mut item, tx_index } = checked;
    let retry = args.retries.is_some();
    let name = item.sig.ident.to_string();

    // The transaction parameter becomes the caller's connection, under a name the body
    // cannot see: inside the body only the transaction is reachable.
    let FnArg::Typed(tx_param) = &item.sig.inputs[tx_index] else {
        unreachable!("checked: the transaction parameter is typed")
    };
    let tx_pat = (*tx_param.pat).clone();
    let mut tx_ty = (*tx_param.ty).clone();
    // The transaction is a local of the expansion: a lifetime the user named on the
    // parameter (`tx: &'a Tx`) cannot be its lifetime.
    if let syn::Type::Reference(reference) = &mut tx_ty {
        reference.lifetime = None;
    }
    let conn_name = match &tx_pat {
        Pat::Ident(PatIdent { ident, .. }) => ident.to_string(),
        _ => "conn".to_owned(),
    };
    let conn = Ident::new(&conn_name, Span::mixed_site());
    let handle = Ident::new("tx", Span::mixed_site());
    let bound = caller_bound(args, tx_param.span());
    item.sig.inputs[tx_index] = syn::parse_quote_spanned! {tx_param.span()=>
        #conn: #bound
    };

    // With retries every attempt gets its own copy of each argument, made at the start
    // of the attempt and spanned on the argument, so a missing `Clone` is reported there.
    let mut copies = Vec::new();
    if retry {
        for (i, arg) in item.sig.inputs.iter_mut().enumerate() {
            let FnArg::Typed(PatType { pat, ty, .. }) = arg else {
                continue;
            };
            if i == tx_index {
                continue;
            }
            let span = ty.span();
            let outer = match &mut **pat {
                Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => {
                    let outer = p.ident.clone();
                    let inner = p.clone();
                    p.mutability = None;
                    copies.push(quote_spanned! {span=>
                        let #inner = ::safe_db::__private::retry_copy(&#outer);
                    });
                    continue;
                }
                _ => format_ident!("arg{}", i, span = Span::mixed_site()),
            };
            let inner = std::mem::replace(&mut **pat, syn::parse_quote!(#outer));
            copies.push(quote_spanned! {span=>
                let #inner = ::safe_db::__private::retry_copy(&#outer);
            });
        }
    }

    let ReturnType::Type(_, ret) = &item.sig.output else {
        unreachable!("checked: the function returns a Result")
    };
    let ret = (**ret).clone();
    // The one place the declared return type must be a `Result` whose error holds a
    // `DbErr`, spanned on it: a mistake there is one error, on the user's tokens.
    let into = quote_spanned! {ret.span()=>
        ::safe_db::__private::db_err_into::<#ret>
    };
    let managed = quote_spanned! {tx_ty.span()=>
        let #tx_pat: #tx_ty = ::safe_db::__private::TxParam::from_tx(#handle);
    };
    let body = &item.block;
    let mode = if retry {
        quote!(retrying)
    } else {
        quote!(single)
    };
    let options = options(args);
    let fake = Ident::new("declared", Span::mixed_site());
    let allow = allowed_lints();
    // A never-run `return` of the declared type fixes the body's type to it, so a type
    // error in the body is reported on the body's tokens, against the declared type.
    let declared = quote_spanned! {ret.span()=>
        #allow
        if false {
            let #fake: #ret = loop {};
            return #fake;
        }
    };

    // Its path (`module::function`, `Type::method`), which `Faults` targets: the type name
    // of an item declared in the function's body.
    let name = quote! {
        ::safe_db::__private::OpName::at(#name, {
            fn __safe_db_here() {}
            ::core::any::type_name_of_val(&__safe_db_here)
        })
    };
    let block = quote! {{
        ::safe_db::__operation!(#mode: #conn, #options, #name, #into, |#handle| {
            #managed
            #(#copies)*
            #declared
            #body
        })
    }};
    item.block = syn::parse_quote!(#block);
    quote!(#item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    /// The expansion without whitespace, so that assertions do not depend on how
    /// `quote` spaces its tokens.
    fn expand_str(args: Args, item: syn::ItemFn) -> String {
        let checked = crate::check::check(item, &args).expect("valid");
        squash(&expand(&args, checked).to_string())
    }

    fn squash(code: &str) -> String {
        code.split_whitespace().collect()
    }

    #[track_caller]
    fn assert_has(out: &str, needle: &str) {
        assert!(out.contains(&squash(needle)), "`{needle}` not in {out}");
    }

    #[test]
    fn rewrites_the_transaction_parameter_into_a_connection() {
        let out = expand_str(
            Args::default(),
            parse_quote!(
                async fn f(tx: &Tx, id: i32) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert_has(&out, "tx: &impl ::safe_db::__private::Begin");
        assert_has(&out, "id: i32");
        assert_has(&out, "::safe_db::__operation!(single:");
        assert_has(&out, "TxParam::from_tx");
        assert!(!out.contains("retry_copy"), "{out}");
    }

    #[test]
    fn options_become_a_const_expression() {
        let args: Args = parse_quote!(
            isolation = "serializable",
            read_only,
            timeout = "2s",
            retries = 3
        );
        let out = expand_str(
            args,
            parse_quote!(
                async fn f(tx: &Tx) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert_has(&out, "::safe_db::__operation!(retrying:");
        assert_has(
            &out,
            ".isolation(::safe_db::__private::Isolation::Serializable)",
        );
        assert_has(&out, ".read_only()");
        assert_has(&out, "from_millis(2000u64)");
        assert_has(&out, ".retries(3u32)");
    }

    #[test]
    fn retries_copy_each_argument_per_attempt() {
        let args: Args = parse_quote!(retries = 2);
        let out = expand_str(
            args,
            parse_quote!(
                async fn f(tx: &Tx, mut name: String, (a, b): (i32, i32)) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        // The outer parameter loses `mut`; the per-attempt copy keeps it.
        assert_has(&out, "name: String");
        assert_has(
            &out,
            "let mut name = ::safe_db::__private::retry_copy(&name)",
        );
        assert_has(&out, "let (a, b) = ::safe_db::__private::retry_copy(&arg2)");
    }
}
