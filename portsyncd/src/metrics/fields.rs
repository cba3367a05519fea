//! One definition per counter: a counters struct declared with [`described!`] carries its
//! fields' doc comments as data, so the Prometheus HELP text is the field's documentation and
//! cannot drift from it.

/// A struct whose fields' names and doc comments are available at run time.
pub trait Described {
    /// `(field, doc comment)` in declaration order.
    const FIELDS: &'static [(&'static str, &'static str)];

    /// The doc comment of `field`, trimmed.
    fn help(field: &str) -> Option<&'static str> {
        Self::FIELDS.iter().find(|(f, _)| *f == field).map(|(_, h)| h.trim())
    }
}

/// Declares a struct (every field documented) and implements [`Described`] for it.
#[macro_export]
macro_rules! described {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $fvis:vis $field:ident : $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[doc = $doc])+ $fvis $field: $ty, )*
        }
        impl $crate::metrics::fields::Described for $name {
            const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($field), concat!($($doc),+)),)*];
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Described;

    crate::described! {
        #[derive(Debug, Default)]
        struct Sample {
            /// First line
            /// and its continuation.
            a: u64,
            /// Second.
            b: u64,
        }
    }

    #[test]
    fn doc_comments_become_help_text() {
        let _ = Sample::default().a + Sample::default().b;
        assert_eq!(Sample::FIELDS.iter().map(|f| f.0).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(Sample::help("a"), Some("First line and its continuation."));
        assert_eq!(Sample::help("b"), Some("Second."));
        assert_eq!(Sample::help("c"), None);
    }
}
