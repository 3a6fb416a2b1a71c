//! `#[safe_db::test]`: parsed ([`TestArgs`]), checked ([`check`]) and expanded
//! ([`expand`]) apart, as the operation attribute is.
//!
//! ```text
//! #[safe_db::test(setup = schema, backends(sqlite, postgres))]
//! async fn name(test: &TestTx) -> Result<(), E> { … }
//! ```
//! becomes a `#[test] fn name()` that runs the `async fn`, kept as it was inside it, once
//! per configured database, through `safe_db::__private::run_test`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Path, Token, Type};

const OPTIONS: &str = "`setup = path::to::fn`, `backends(sqlite, postgres, mysql)`";
const BACKENDS: [(&str, &str); 3] = [
    ("sqlite", "Sqlite"),
    ("postgres", "Postgres"),
    ("mysql", "MySql"),
];

/// The options of one `#[safe_db::test(...)]`.
#[derive(Default)]
pub(crate) struct TestArgs {
    setup: Option<Path>,
    /// The runtime's `TestBackend` variants asked for, if restricted.
    backends: Option<Vec<(Ident, &'static str)>>,
}

impl Parse for TestArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = TestArgs::default();
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            match key.to_string().as_str() {
                "setup" if args.setup.is_some() => {
                    return Err(syn::Error::new(key.span(), "`setup` is given twice"));
                }
                "setup" => {
                    input.parse::<Token![=]>()?;
                    args.setup = Some(input.parse()?);
                }
                "backends" if args.backends.is_some() => {
                    return Err(syn::Error::new(key.span(), "`backends` is given twice"));
                }
                "backends" => {
                    let inside;
                    syn::parenthesized!(inside in input);
                    let names = inside.parse_terminated(Ident::parse, Token![,])?;
                    let mut backends = Vec::new();
                    for name in names {
                        let Some((_, variant)) = BACKENDS.iter().find(|(n, _)| name == n) else {
                            return Err(syn::Error::new(
                                name.span(),
                                format!(
                                    "unknown database `{name}`: use `sqlite`, `postgres` or `mysql`"
                                ),
                            ));
                        };
                        backends.push((name, *variant));
                    }
                    if backends.is_empty() {
                        return Err(syn::Error::new(
                            key.span(),
                            "`backends()` names no database: use `sqlite`, `postgres` or `mysql`",
                        ));
                    }
                    args.backends = Some(backends);
                }
                _ => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown option `{key}`: `#[safe_db::test]` takes {OPTIONS}"),
                    ));
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

/// A test function fit to expand, and the type its parameter names.
pub(crate) struct Checked {
    func: ItemFn,
    param: Type,
}

/// Every misuse at once, each on its own tokens.
pub(crate) fn check(func: ItemFn) -> syn::Result<Checked> {
    let mut errors: Vec<syn::Error> = Vec::new();
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span(),
            "`#[safe_db::test]` goes on an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a `#[safe_db::test]` cannot be generic: it runs as a `#[test]`",
        ));
    }
    let mut param = None;
    let usage = "a `#[safe_db::test]` takes one parameter: `test: &TestTx` (a transaction \
                 rolled back after the test) or `db: &Db` (a database of its own)";
    match sig.inputs.iter().collect::<Vec<_>>().as_slice() {
        [] => errors.push(syn::Error::new(sig.paren_token.span.join(), usage)),
        [FnArg::Receiver(receiver)] => errors.push(syn::Error::new_spanned(receiver, usage)),
        [FnArg::Typed(typed)] => match &*typed.ty {
            Type::Reference(reference) if reference.mutability.is_none() => {
                param = Some((*reference.elem).clone());
            }
            Type::Reference(reference) => errors.push(syn::Error::new_spanned(
                reference,
                "take the test's transaction or database by shared reference (`&TestTx`, \
                 `&Db`), not `&mut`",
            )),
            ty => errors.push(syn::Error::new_spanned(
                ty,
                "take the test's transaction or database by reference: `&TestTx` or `&Db`",
            )),
        },
        [_, extra, ..] => errors.push(syn::Error::new_spanned(extra, usage)),
    }
    let mut errors = errors.into_iter();
    if let Some(mut first) = errors.next() {
        errors.for_each(|err| first.combine(err));
        return Err(first);
    }
    Ok(Checked {
        param: param.expect("checked above"),
        func,
    })
}

pub(crate) fn expand(args: &TestArgs, checked: Checked) -> TokenStream {
    let Checked { mut func, param } = checked;
    let name = func.sig.ident.clone();
    let vis = func.vis.clone();
    let attrs = std::mem::take(&mut func.attrs);
    let name_text = name.to_string();

    let mut plan = quote!(::safe_db::__private::TestPlan::new(::core::concat!(
        ::core::module_path!(),
        "::",
        #name_text
    )));
    let mut setup_fn = TokenStream::new();
    if let Some(setup) = &args.setup {
        let setup_text = quote!(#setup).to_string().replace(' ', "");
        setup_fn = quote_spanned! {setup.span()=>
            fn __safe_db_setup(
                db: &::safe_db::__private::DatabaseConnection,
            ) -> ::core::pin::Pin<::std::boxed::Box<
                dyn ::core::future::Future<
                    Output = ::core::result::Result<(), ::std::string::String>,
                > + '_,
            >> {
                ::std::boxed::Box::pin(async move {
                    #setup(db)
                        .await
                        .map_err(|err| ::std::string::ToString::to_string(&err))
                })
            }
        };
        plan.extend(quote!(.setup(::core::concat!(::core::module_path!(), "::", #setup_text), __safe_db_setup)));
    }
    if let Some(backends) = &args.backends {
        let variants = backends.iter().map(|(name, variant)| {
            let variant = Ident::new(variant, name.span());
            quote!(::safe_db::__private::TestBackend::#variant)
        });
        plan.extend(quote!(.only(&[#(#variants),*])));
    }
    let output = match &func.sig.output {
        syn::ReturnType::Default => quote!(()),
        syn::ReturnType::Type(_, ty) => quote!(#ty),
    };
    let run = quote_spanned!(param.span()=> ::safe_db::__private::run_test::<#param, #output>);
    // The runner is an item of its own, compiled in every build (a `#[test]` item is only
    // compiled with `--test`), so that a misuse is reported wherever the code is checked.
    let runner = quote::format_ident!("__safe_db_test_{}", name);
    quote! {
        #[doc(hidden)]
        #[allow(dead_code, non_snake_case)]
        fn #runner() {
            #func
            #setup_fn
            #run(#plan, async |param: &#param| #name(param).await)
        }

        #[::core::prelude::v1::test]
        #(#attrs)*
        #vis fn #name() {
            #runner()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_text(attr: TokenStream, item: TokenStream) -> Result<String, String> {
        let args: TestArgs = syn::parse2(attr).map_err(|e| e.to_string())?;
        let func: ItemFn = syn::parse2(item).map_err(|e| e.to_string())?;
        check(func)
            .map(|checked| expand(&args, checked).to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn expands_to_a_test_running_the_body_per_database() {
        let out = expand_text(
            quote!(setup = schema::create, backends(sqlite, mysql)),
            quote!(
                async fn it_works(test: &TestTx) -> Result<(), Error> {
                    Ok(())
                }
            ),
        )
        .unwrap();
        assert!(out.contains(":: core :: prelude :: v1 :: test"), "{out}");
        assert!(
            out.contains("run_test :: < TestTx , Result < () , Error > >"),
            "{out}"
        );
        assert!(out.contains("\"schema::create\""), "{out}");
        assert!(out.contains("TestBackend :: MySql"), "{out}");
    }

    #[test]
    fn rejects_misuse_on_its_tokens() {
        let err = expand_text(
            quote!(),
            quote!(
                fn f(test: &TestTx) {}
            ),
        )
        .unwrap_err();
        assert!(err.contains("`async fn`"), "{err}");
        let err = expand_text(
            quote!(),
            quote!(
                async fn f() {}
            ),
        )
        .unwrap_err();
        assert!(err.contains("takes one parameter"), "{err}");
        let err = expand_text(
            quote!(),
            quote!(
                async fn f(test: TestTx) {}
            ),
        )
        .unwrap_err();
        assert!(err.contains("by reference"), "{err}");
        let err = expand_text(
            quote!(retries = 3),
            quote!(
                async fn f(t: &TestTx) {}
            ),
        )
        .unwrap_err();
        assert!(err.contains("unknown option `retries`"), "{err}");
        let err = expand_text(
            quote!(backends(oracle)),
            quote!(
                async fn f(t: &TestTx) {}
            ),
        )
        .unwrap_err();
        assert!(err.contains("unknown database `oracle`"), "{err}");
    }
}
