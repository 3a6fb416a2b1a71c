//! The attribute's arguments, parsed and validated into [`Args`].

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitBool, LitInt, LitStr, Token};

const OPTIONS: &str = "`isolation`, `read_only`, `timeout`, `retries`, `requires_new`, \
                       `mandatory`, `durable`, `savepoint = false`";
/// The isolation levels: the name the attribute takes, and the runtime's `Isolation`
/// variant it becomes (the runtime's `Isolation::name` spells the same names).
const ISOLATIONS: [(&str, &str); 4] = [
    ("read_uncommitted", "ReadUncommitted"),
    ("read_committed", "ReadCommitted"),
    ("repeatable_read", "RepeatableRead"),
    ("serializable", "Serializable"),
];

/// An isolation level, as the name of the runtime's `Isolation` variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Isolation(&'static str);

impl Isolation {
    pub(crate) fn variant(self) -> &'static str {
        self.0
    }
}

/// How an operation relates to its caller's transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// Joins the caller's transaction (in a savepoint) or begins one.
    #[default]
    Required,
    /// Always a transaction of its own, on a connection of its own.
    RequiresNew,
    /// Only inside a caller's transaction.
    Mandatory,
    /// Only outermost: its `Ok` means committed.
    Durable,
}

/// The validated options of one `#[safe_db_operation(...)]`.
#[derive(Default, Debug)]
pub(crate) struct Args {
    pub(crate) isolation: Option<Isolation>,
    pub(crate) read_only: bool,
    /// The timeout in milliseconds.
    pub(crate) timeout_ms: Option<u64>,
    /// `retries = N`.
    pub(crate) retries: Option<u32>,
    pub(crate) propagation: Propagation,
    /// `savepoint = false`: joins a caller's transaction without a savepoint.
    pub(crate) joins: bool,
    /// Where each option given was named, for errors about combinations.
    given: Vec<(&'static str, Span)>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut seen: Vec<String> = Vec::new();
        let mut errors: Option<syn::Error> = None;
        let mut push = |err: syn::Error| match &mut errors {
            Some(all) => all.combine(err),
            None => errors = Some(err),
        };
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            let value: Option<Expr> = if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                Some(input.parse()?)
            } else {
                None
            };
            let name = key.to_string();
            if seen.contains(&name) {
                push(syn::Error::new(
                    key.span(),
                    format!("the option `{name}` is given more than once"),
                ));
            } else {
                seen.push(name.clone());
                if let Err(err) = args.set(&key, value) {
                    push(err);
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        // Contradictions only between options that are each valid.
        if errors.is_none() {
            errors = args.contradictions().into_iter().reduce(|mut all, e| {
                all.combine(e);
                all
            });
        }
        match errors {
            Some(err) => Err(err),
            None => Ok(args),
        }
    }
}

/// Pairs of options that cannot go together, and why: the error is reported on the
/// second of the two as written.
const CONTRADICTIONS: &[(&str, &str, &str)] = &[
    (
        "mandatory",
        "durable",
        "a `mandatory` operation runs only inside its caller's transaction, and a `durable` \
         one only outside any",
    ),
    (
        "mandatory",
        "requires_new",
        "a `mandatory` operation runs only inside its caller's transaction, and a \
         `requires_new` one always in a transaction of its own",
    ),
    (
        "mandatory",
        "isolation",
        "a `mandatory` operation runs inside its caller's transaction, whose isolation level \
         was chosen when it began: set it on the outermost operation",
    ),
    (
        "mandatory",
        "retries",
        "a `mandatory` operation runs inside its caller's transaction, which cannot be re-run \
         from the middle: only the outermost operation retries, so set `retries` there",
    ),
    (
        "durable",
        "requires_new",
        "`durable` adds nothing to `requires_new`: a `requires_new` operation always commits \
         its own transaction before it returns; keep one of the two",
    ),
    (
        "savepoint",
        "isolation",
        "with `savepoint = false` the operation joins its caller's transaction, whose \
         isolation level was chosen when it began: set it on the outermost operation",
    ),
    (
        "savepoint",
        "retries",
        "with `savepoint = false` the operation joins its caller's transaction, which cannot \
         be re-run from the middle: only the outermost operation retries, so set `retries` there",
    ),
    (
        "savepoint",
        "read_only",
        "with `savepoint = false` the operation joins its caller's transaction as it is, and \
         cannot make it read-only: a `read_only` nested operation needs its savepoint",
    ),
    (
        "savepoint",
        "timeout",
        "with `savepoint = false` the operation's statements run in its caller's transaction, \
         under the caller's time limit: a nested operation bounds its own statements in its \
         savepoint, so set the `timeout` on the caller or keep the savepoint",
    ),
    (
        "savepoint",
        "requires_new",
        "a `requires_new` operation always runs in a transaction of its own, never in a \
         caller's: `savepoint = false` would never apply",
    ),
    (
        "savepoint",
        "durable",
        "a `durable` operation is always the outermost one, never in a caller's transaction: \
         `savepoint = false` would never apply",
    ),
];

impl Args {
    /// The options that were given together but contradict each other.
    fn contradictions(&self) -> Vec<syn::Error> {
        let position = |name: &str| self.given.iter().position(|(given, _)| *given == name);
        let mut out = Vec::new();
        for (a, b, why) in CONTRADICTIONS {
            let (Some(i), Some(j)) = (position(a), position(b)) else {
                continue;
            };
            let name = |n: &str| match n {
                "savepoint" => "savepoint = false".to_owned(),
                other => other.to_owned(),
            };
            let (first, second) = if i < j { (a, b) } else { (b, a) };
            let span = self.given[i.max(j)].1;
            out.push(syn::Error::new(
                span,
                format!(
                    "`{}` cannot be combined with `{}`: {why}",
                    name(second),
                    name(first)
                ),
            ));
        }
        out
    }

    fn set(&mut self, key: &Ident, value: Option<Expr>) -> syn::Result<()> {
        // A value passed through a `macro_rules!` fragment (`$iso:literal`, `$t:expr`)
        // arrives wrapped in an invisible group.
        let value = value.map(ungroup);
        let name = match key.to_string().as_str() {
            "isolation" => {
                let lit = string_value(key, value, "isolation = \"serializable\"")?;
                self.isolation = Some(parse_isolation(&lit)?);
                "isolation"
            }
            "read_only" => {
                no_value(key, value)?;
                self.read_only = true;
                "read_only"
            }
            "timeout" => {
                let lit = string_value(key, value, "timeout = \"2s\"")?;
                self.timeout_ms = Some(parse_duration_ms(&lit)?);
                "timeout"
            }
            "retries" => {
                let lit = int_value(key, value)?;
                self.retries = Some(parse_retries(&lit)?);
                "retries"
            }
            // Two of these together are a contradiction, reported with its reason once
            // every option has been read.
            "requires_new" => {
                no_value(key, value)?;
                self.propagation = Propagation::RequiresNew;
                "requires_new"
            }
            "mandatory" => {
                no_value(key, value)?;
                self.propagation = Propagation::Mandatory;
                "mandatory"
            }
            "durable" => {
                no_value(key, value)?;
                self.propagation = Propagation::Durable;
                "durable"
            }
            "savepoint" => {
                parse_savepoint(key, value)?;
                self.joins = true;
                "savepoint"
            }
            other => {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown option `{other}`; the options are {OPTIONS}"),
                ));
            }
        };
        self.given.push((name, key.span()));
        Ok(())
    }
}

/// `savepoint = false`, the only value the option takes.
fn parse_savepoint(key: &Ident, value: Option<Expr>) -> syn::Result<()> {
    let why = match value {
        Some(Expr::Lit(ExprLit {
            lit: Lit::Bool(LitBool { value: false, .. }),
            ..
        })) => return Ok(()),
        Some(Expr::Lit(ExprLit {
            lit: Lit::Bool(LitBool { value: true, span }),
            ..
        })) => {
            return Err(syn::Error::new(
                span,
                "`savepoint = true` is the default: remove it (the option is for \
                 `savepoint = false`)",
            ));
        }
        Some(other) => (other.span(), "`savepoint` takes `false`"),
        None => (key.span(), "`savepoint` needs a value"),
    };
    Err(syn::Error::new(
        why.0,
        format!(
            "{}: write `savepoint = false` to join a caller's transaction without a savepoint",
            why.1
        ),
    ))
}

/// A flag option: an error if it was given a value.
fn no_value(key: &Ident, value: Option<Expr>) -> syn::Result<()> {
    match value {
        Some(value) => Err(syn::Error::new(
            value.span(),
            format!("`{key}` takes no value: write `{key}` alone"),
        )),
        None => Ok(()),
    }
}

/// `expr` without the invisible groups `macro_rules!` fragments put around it.
fn ungroup(mut expr: Expr) -> Expr {
    while let Expr::Group(group) = expr {
        expr = *group.expr;
    }
    expr
}

fn string_value(key: &Ident, value: Option<Expr>, example: &str) -> syn::Result<LitStr> {
    match value {
        Some(Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        })) => Ok(lit),
        Some(other) => Err(syn::Error::new(
            other.span(),
            format!("`{key}` takes a string literal, for example `{example}`"),
        )),
        None => Err(syn::Error::new(
            key.span(),
            format!("`{key}` needs a value, for example `{example}`"),
        )),
    }
}

fn int_value(key: &Ident, value: Option<Expr>) -> syn::Result<LitInt> {
    match value {
        Some(Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        })) => Ok(lit),
        Some(other) => Err(syn::Error::new(
            other.span(),
            format!("`{key}` takes a whole number of retries, for example `retries = 3`"),
        )),
        None => Err(syn::Error::new(
            key.span(),
            format!("`{key}` needs a value, for example `retries = 3`"),
        )),
    }
}

pub(crate) fn parse_isolation(lit: &LitStr) -> syn::Result<Isolation> {
    let name = lit.value();
    match ISOLATIONS.iter().find(|(known, _)| *known == name) {
        Some((_, variant)) => Ok(Isolation(variant)),
        None => Err(syn::Error::new(
            lit.span(),
            format!(
                "unknown isolation level \"{name}\"; expected one of {}",
                ISOLATIONS
                    .map(|(known, _)| format!("\"{known}\""))
                    .join(", ")
            ),
        )),
    }
}

/// `"250ms"`, `"2s"`, `"1m"`, `"1h"`: a whole number and a unit.
pub(crate) fn parse_duration_ms(lit: &LitStr) -> syn::Result<u64> {
    let text = lit.value();
    let bad = |why: &str| {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid timeout \"{text}\": {why}; write a whole number and a unit: \"250ms\", \"2s\", \"1m\" or \"1h\""
            ),
        )
    };
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad("it does not start with a number"));
    }
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad("the number is too large"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(bad("the unit is missing")),
        _ => return Err(bad(&format!("unknown unit `{unit}`"))),
    };
    match number.checked_mul(scale) {
        Some(0) => Err(bad("a timeout of zero would fail every operation")),
        Some(ms) => Ok(ms),
        None => Err(bad("the number is too large")),
    }
}

pub(crate) fn parse_retries(lit: &LitInt) -> syn::Result<u32> {
    if !lit.suffix().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            "`retries` takes a plain number, without a type suffix",
        ));
    }
    match lit.base10_parse::<u32>() {
        Ok(0) => Err(syn::Error::new(
            lit.span(),
            "`retries = 0` does nothing: remove the option, or allow at least 1 retry",
        )),
        Ok(n) if n <= 1000 => Ok(n),
        _ => Err(syn::Error::new(
            lit.span(),
            "`retries` must be a number from 1 to 1000",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Args> {
        syn::parse2(tokens)
    }

    #[test]
    fn empty_is_default() {
        let args = parse(quote::quote!()).unwrap();
        assert!(args.isolation.is_none() && !args.read_only);
        assert!(args.timeout_ms.is_none() && args.retries.is_none());
    }

    #[test]
    fn all_options() {
        let args = parse(quote::quote!(
            isolation = "serializable",
            read_only,
            timeout = "250ms",
            retries = 3,
        ))
        .unwrap();
        assert_eq!(args.isolation.map(Isolation::variant), Some("Serializable"));
        assert!(args.read_only);
        assert_eq!(args.timeout_ms, Some(250));
        assert_eq!(args.retries, Some(3));
    }

    #[test]
    fn durations() {
        let ms = |s: &str| parse_duration_ms(&LitStr::new(s, proc_macro2::Span::call_site()));
        assert_eq!(ms("250ms").unwrap(), 250);
        assert_eq!(ms("2s").unwrap(), 2_000);
        assert_eq!(ms("1m").unwrap(), 60_000);
        assert_eq!(ms("1h").unwrap(), 3_600_000);
        for bad in [
            "",
            "s",
            "2",
            "2 s",
            "1.5s",
            "0ms",
            "3d",
            "-1s",
            "99999999999999999999s",
        ] {
            assert!(ms(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn errors_are_collected() {
        let err = parse(quote::quote!(isolation = "snapshot", retries = 0, bogus)).unwrap_err();
        let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("unknown isolation level \"snapshot\""));
        assert!(messages[1].contains("`retries = 0` does nothing"));
        assert!(messages[2].contains("unknown option `bogus`"));
    }

    #[test]
    fn propagation_options() {
        let args = parse(quote::quote!(
            requires_new,
            retries = 2,
            isolation = "serializable"
        ))
        .unwrap();
        assert_eq!(args.propagation, Propagation::RequiresNew);
        let args = parse(quote::quote!(mandatory, savepoint = false, read_only)).unwrap_err();
        assert!(
            args.to_string().contains("cannot make it read-only"),
            "{args}"
        );
        let args = parse(quote::quote!(mandatory, savepoint = false)).unwrap();
        assert_eq!(args.propagation, Propagation::Mandatory);
        assert!(args.joins);
        let args = parse(quote::quote!(durable, timeout = "1s")).unwrap();
        assert_eq!(args.propagation, Propagation::Durable);
    }

    #[test]
    fn contradictions_name_both_options_and_why() {
        for (tokens, expected) in [
            (
                quote::quote!(mandatory, durable),
                "`durable` cannot be combined with `mandatory`",
            ),
            (
                quote::quote!(requires_new, mandatory),
                "`mandatory` cannot be combined with `requires_new`",
            ),
            (
                quote::quote!(isolation = "serializable", mandatory),
                "isolation level was chosen",
            ),
            (
                quote::quote!(mandatory, retries = 3),
                "only the outermost operation retries",
            ),
            (quote::quote!(durable, requires_new), "adds nothing"),
            (
                quote::quote!(savepoint = false, isolation = "serializable"),
                "`isolation` cannot be combined with `savepoint = false`",
            ),
            (
                quote::quote!(savepoint = false, retries = 1),
                "cannot be re-run",
            ),
            (
                quote::quote!(savepoint = false, timeout = "1s"),
                "time limit",
            ),
            (
                quote::quote!(requires_new, savepoint = false),
                "would never apply",
            ),
            (
                quote::quote!(durable, savepoint = false),
                "would never apply",
            ),
        ] {
            let err = parse(tokens).unwrap_err();
            let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(
                messages[0].contains(expected),
                "{expected:?} not in {messages:?}"
            );
        }
        let err = parse(quote::quote!(savepoint = true)).unwrap_err();
        assert!(err.to_string().contains("is the default"));
        let err = parse(quote::quote!(savepoint = "no")).unwrap_err();
        assert!(err.to_string().contains("takes `false`"));
        let err = parse(quote::quote!(mandatory = true)).unwrap_err();
        assert!(err.to_string().contains("takes no value"));
    }

    #[test]
    fn duplicates_and_shapes() {
        let err = parse(quote::quote!(read_only, read_only)).unwrap_err();
        assert!(err.to_string().contains("given more than once"));
        let err = parse(quote::quote!(retries = "3")).unwrap_err();
        assert!(err.to_string().contains("whole number"));
        let err = parse(quote::quote!(timeout = 5)).unwrap_err();
        assert!(err.to_string().contains("string literal"));
        let err = parse(quote::quote!(read_only = true)).unwrap_err();
        assert!(err.to_string().contains("takes no value"));
        let lit: LitInt = parse_quote!(3u8);
        assert!(parse_retries(&lit).is_err());
    }
}
