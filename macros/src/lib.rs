//! The `#[safe_db_operation]` attribute of [safe-db](https://docs.rs/safe-db).
//!
//! Depend on `safe-db` and use `safe_db::safe_db_operation`: the expansion refers to the
//! runtime through `::safe_db::…` paths, and the attribute's documentation, with
//! examples, lives there.

mod args;
mod check;
mod expand;
mod test_attr;

use proc_macro::TokenStream;
use quote::ToTokens;

/// (Implemented by the `safe-db-macros` crate; use it as `safe_db::safe_db_operation`.)
#[proc_macro_attribute]
pub fn safe_db_operation(attr: TokenStream, item: TokenStream) -> TokenStream {
    operation(attr.into(), item.into()).into()
}

/// (Implemented by the `safe-db-macros` crate; use it as `safe_db::test`, with the
/// runtime's feature `testing`.)
#[proc_macro_attribute]
pub fn test(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: proc_macro2::TokenStream = item.into();
    let args = syn::parse2::<test_attr::TestArgs>(attr.into());
    let result = match (args, syn::parse2::<syn::ItemFn>(item.clone())) {
        (_, Err(err)) => Err(syn::Error::new(
            err.span(),
            "`#[safe_db::test]` can only be applied to an `async fn`",
        )),
        (Err(err), Ok(_)) => Err(err),
        (Ok(args), Ok(func)) => {
            test_attr::check(func).map(|checked| test_attr::expand(&args, checked))
        }
    };
    match result {
        Ok(expanded) => expanded.into(),
        Err(err) => {
            let mut out = err.into_compile_error();
            out.extend(item);
            out.into()
        }
    }
}

fn operation(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let parsed = syn::parse2::<syn::ItemFn>(item.clone());
    let args = syn::parse2::<args::Args>(attr);
    let result = match (args, parsed) {
        (_, Err(_)) => Err(not_a_function(&item)),
        (Err(err), Ok(_)) => Err(err),
        (Ok(args), Ok(func)) => {
            check::check(func, &args).map(|checked| expand::expand(&args, checked))
        }
    };
    match result {
        Ok(expanded) => expanded,
        // Emit the item unchanged beside the error, so the IDE still knows the function.
        Err(err) => {
            let mut out = err.into_compile_error();
            out.extend(item);
            out
        }
    }
}

fn not_a_function(item: &proc_macro2::TokenStream) -> syn::Error {
    if let Ok(decl) = syn::parse2::<syn::TraitItemFn>(item.clone())
        && decl.default.is_none()
    {
        return syn::Error::new_spanned(
            decl.sig.ident.to_token_stream(),
            "`#[safe_db_operation]` goes on the function's body, in the `impl` block; \
             declare the trait method with the caller's signature, \
             e.g. `fn name(&self, db: &impl safe_db::Begin, …)`",
        );
    }
    let span_of = item.clone().into_iter().next();
    let message = "`#[safe_db_operation]` can only be applied to an `async fn`";
    match span_of {
        Some(first) => syn::Error::new(first.span(), message),
        None => syn::Error::new(proc_macro2::Span::call_site(), message),
    }
}
