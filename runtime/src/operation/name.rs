//! What an operation is called ([`OpName`]): its name and the path `Faults` targets.

/// What an operation is called: its name (in spans and metrics) and its path
/// (`module::function`, `Type::method`: what `safe_db::testing::Faults` targets).
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct OpName {
    pub(super) name: &'static str,
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(super) path: &'static str,
}

impl OpName {
    /// An annotated function's: `here` is the type name of an item declared in its body.
    #[inline]
    pub fn at(name: &'static str, here: &'static str) -> OpName {
        OpName { name, path: here }
    }

    /// The closure form's: its path is its name.
    #[inline]
    pub const fn plain(name: &'static str) -> OpName {
        OpName { name, path: name }
    }
}
