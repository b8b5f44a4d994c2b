//! Enums whose variants have stable names (reasons, stages, modes): the names appear in responses, logs and
//! metric names, and the counters are arrays indexed by variant. One list per enum generates the variants,
//! `ALL`, `as_str` and `Display`, so no variant can be missing from `ALL` (an index past the counter array
//! would trap the VM on the request that hit it) or lack a name.

/// `named_enum! { #[derive(...)] pub enum E { /// doc \n Variant => "name", ... } }`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every variant in declaration order: `ALL[v as usize] == v`.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The stable name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::config::{Mode, Stage};
    use crate::destination::InvalidReason;
    use crate::policy::DenyReason;

    /// The counters index by `variant as usize`; a discriminant written by hand would break that.
    #[test]
    fn all_is_indexed_by_discriminant_and_names_are_distinct() {
        fn check<T: Copy + PartialEq + core::fmt::Debug>(
            all: &[T],
            index: fn(T) -> usize,
            name: fn(T) -> &'static str,
        ) {
            for (i, &v) in all.iter().enumerate() {
                assert_eq!(index(v), i, "{v:?}");
                assert_eq!(
                    all.iter().filter(|&&w| name(w) == name(v)).count(),
                    1,
                    "{v:?}"
                );
            }
        }
        check(&DenyReason::ALL, |v| v as usize, DenyReason::as_str);
        check(&InvalidReason::ALL, |v| v as usize, InvalidReason::as_str);
        check(&Stage::ALL, |v| v as usize, Stage::as_str);
        check(&Mode::ALL, |v| v as usize, Mode::as_str);
    }
}
